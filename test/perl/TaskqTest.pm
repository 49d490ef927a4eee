# TaskqTest: what every taskq TAP test starts with.
#
#   my $node = taskq_node('name', <<'EOC');   # extra postgresql.conf lines
#   taskq.workers = 1
#   EOC
#   wait_task_status($node, $id, 'completed');
#
# The node preloads taskq with dispatchers in database "postgres" and
# room for them in max_worker_processes, and is started.  Pass
# init => { allows_streaming => 1 } (etc.) in %opts to shape init().
package TaskqTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use Test::More;

our @EXPORT = qw(taskq_node wait_task_status idle_dispatchers_holding);

sub taskq_node
{
	my ($name, $conf, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init(%{ $opts{init} // {} });
	$node->append_conf('postgresql.conf',
		    "shared_preload_libraries = 'taskq'\n"
		  . "taskq.databases = 'postgres'\n"
		  . "max_worker_processes = 16\n"
		  . ($conf // ''));
	$node->start unless $opts{no_start};
	return $node;
}

# Poll until task $id has $status (in database $db, "postgres" by default);
# on a time-out, show where the task is and return false.
sub wait_task_status
{
	my ($node, $id, $status, $db) = @_;
	$db //= 'postgres';
	return 1
	  if $node->poll_query_until($db,
		"SELECT status = '$status' FROM taskq.tasks WHERE id = $id");
	diag "task $id in $db: "
	  . $node->safe_psql($db,
		"SELECT status, attempts, last_error FROM taskq.tasks WHERE id = $id");
	return 0;
}

# Whether the dispatchers of database $db fail to reach a moment at which
# none of them holds an xmin, an xid or an open transaction: 0 once they
# all do (polled), 1 if they never do.  An idle dispatcher still wakes for
# its maintenance and next-due read (a few milliseconds); one that kept a
# snapshot or a transaction between batches never gets there.
sub idle_dispatchers_holding
{
	my ($node, $db) = @_;
	my $reached = $node->poll_query_until($db,
		qq{SELECT count(*) = 0 FROM pg_stat_activity
           WHERE backend_type = 'taskq dispatcher' AND datname = '$db'
             AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL
                  OR xact_start IS NOT NULL OR state <> 'idle')});
	note "the dispatchers of $db " . ($reached ? 'were all seen idle holding nothing' : 'kept holding');
	return $reached ? 0 : 1;
}

1;
