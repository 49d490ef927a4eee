# Crash markers stay out of base backups.  A dispatcher marks the task
# whose handler runs in a small file, which the postmaster reads back after
# a crash to charge that task.  A standby made with pg_basebackup while a
# handler runs, then promoted, must not charge that task a crash: nothing
# crashed there.  The markers live in pg_stat_tmp, whose contents
# pg_basebackup does not copy (0.1 kept them in PGDATA/pg_taskq).
use strict;
use warnings;
use File::Find;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = taskq_node('primary', <<'EOC', init => { allows_streaming => 1 });
taskq.workers = 1
taskq.poll_interval = '200ms'
EOC

sub sql_p { return $primary->safe_psql('postgres', $_[0]); }

sql_p(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE ledger (n int PRIMARY KEY);
-- waits for advisory lock 4242, which the test holds on the primary
CREATE FUNCTION public.stall(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(4242);
    INSERT INTO ledger (n) VALUES ((p->>'n')::int);
END $$;
SELECT taskq.register_handler('stall', 'public.stall(jsonb)');
EOS

# taskq 0.1 kept its markers in PGDATA/pg_taskq; a leftover directory is
# removed when the server starts, and its markers are not read.
my $pgdata = $primary->data_dir;
my $dboid = sql_p(q{SELECT oid FROM pg_database WHERE datname = 'postgres'});
$primary->stop;
mkdir("$pgdata/pg_taskq") or die "mkdir: $!";
open(my $legacy, '>:raw', "$pgdata/pg_taskq/slot_0") or die "open: $!";
print $legacy pack('L x4 q', $dboid, 1);
close($legacy);
my $log_offset = -s $primary->logfile;
$primary->start;
ok(!-e "$pgdata/pg_taskq", 'the server removed the 0.1 marker directory pg_taskq');
my $startlog = slurp_file($primary->logfile, $log_offset);
like($startlog, qr/taskq: removed directory "pg_taskq", where taskq 0.1 kept its crash markers/,
	'and said so');
unlike($startlog, qr/taskq: task \d+ was running when/, 'without reading its marker');

ok( $primary->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 FROM taskq.workers WHERE type = 'dispatcher'}),
	'a dispatcher runs on the primary');

my $holder = $primary->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(4242)');
my $stall = sql_p(q{SELECT taskq.enqueue('stall', '{"n": 1}')});
ok( $primary->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM taskq.workers w JOIN pg_stat_activity a USING (pid)
         WHERE w.current_task = $stall AND a.wait_event_type = 'Lock'"),
	"the handler of task $stall runs (and waits for the lock)");

# The primary's crash marker names the running task: (dboid, task id).
my @markers = glob("$pgdata/pg_stat_tmp/taskq_slot_*");
is(scalar(@markers), 1, 'the dispatcher has its crash marker in pg_stat_tmp');
my $marked = 'none';
if (@markers && open(my $fh, '<:raw', $markers[0]))
{
	my $bytes;
	read($fh, $bytes, 16);
	close($fh);
	(undef, $marked) = unpack('L x4 q', $bytes) if length($bytes // '') == 16;
}
is($marked, $stall, 'the marker names the running task');

# A base backup while the handler runs.
$primary->backup('base');
my $backup = $primary->backup_dir . '/base';
my @copied;
find(sub { push @copied, $File::Find::name if /^(taskq_slot_|pg_taskq$)/ }, $backup);
is(join(', ', @copied), '', 'the base backup holds no crash marker');

# A standby from that backup, promoted: the task is an orphan there (its
# dispatcher ran on the primary), returned to the queue uncharged.
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$log_offset = -s $standby->logfile // 0;
$standby->start;
$primary->wait_for_catchup($standby);
is( $standby->safe_psql('postgres', "SELECT status FROM taskq.tasks WHERE id = $stall"),
	'running', 'the standby has the task as running');
$standby->promote;
ok(wait_task_status($standby, $stall, 'completed'), 'the task completes on the promoted standby');
is( $standby->safe_psql('postgres',
		"SELECT attempts, crashes, last_error IS NULL FROM taskq.tasks WHERE id = $stall"),
	'1|0|t', 'in one attempt, charged no crash');
unlike(slurp_file($standby->logfile, $log_offset), qr/taskq: task \d+ was running when/,
	'the standby read no crash marker and charged no crash');

$holder->quit;
ok(wait_task_status($primary, $stall, 'completed'), 'the task completes on the primary too');
$standby->stop;
$primary->stop;
done_testing();
