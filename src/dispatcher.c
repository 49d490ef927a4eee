/*-------------------------------------------------------------------------
 *
 * dispatcher.c
 *	  The per-database loop: claim due tasks, run them, record outcomes.
 *
 * A batch takes two short transactions:
 *
 *	1. claim	up to taskq.batch_size due tasks, in order priority DESC,
 *				run_at, id, skipping rows other dispatchers hold (FOR UPDATE
 *				SKIP LOCKED), and mark them 'running' with our pid.  It
 *				commits before any handler runs; a crash that a handler
 *				causes is counted from the crash marker (shmem.c).
 *	2. run		each task in its own subtransaction, as the role that
 *				enqueued it (a security-restricted operation: no temporary
 *				objects or session state survive into the next task),
 *				under its timeout; the handler's writes and the
 *				task's new status commit together, so a function handler's
 *				effects happen exactly once.  The transaction commits after
 *				the batch, or sooner when it has run for a while, to keep
 *				row locks and the xmin horizon short.
 *
 * Both commit without waiting for the WAL flush unless
 * taskq.synchronous_commit is on, as a subscription's apply worker does by
 * default, and for the same reason: a crash can only lose the last
 * batches' outcomes together with their handlers' effects, and those tasks
 * are then run again.  Flush waits were half of a drain's time.
 *
 * Between batches a dispatcher holds no transaction, snapshot or lock.  A
 * task that another session cancels while it runs is interrupted at that
 * session's commit (shmem.c); our status update then finds the task no
 * longer 'running' and we roll the handler's subtransaction back.  A
 * handler that traps its timeout's or a cancel's error and runs on is
 * stopped by the launcher, which terminates us after taskq.interrupt_grace
 * (shmem.c); the task's attempt is then charged as a timeout, not a crash.
 *
 * Maintenance (at most once a second): charge crash suspects and return
 * orphaned 'running' tasks to the queue, redeliver notify tasks whose
 * lease ran out, expire tasks past expires_at, and remove ended tasks
 * older than taskq.retention.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#define RUN_TRANSACTION_MS	200	/* commit a batch's run transaction after this */
#define MAINTENANCE_MS		1000
#define LOCK_CHECK_MS		1000	/* idle wake-up to notice DROP DATABASE */
#define MAX_BATCH_HANDLERS	8

static int	my_slotno = -1;
static TaskqSlot *my_slot = NULL;
static MemoryContext batch_ctx = NULL;
static TimestampTz last_maintenance = 0;
static TimestampTz next_lease_expiry = DT_NOEND;	/* maintenance due then */

/*
 * What our own batches made due later, since the last next-due read: the
 * earliest retry, and the earliest lease of a task we dispatched.
 */
static TimestampTz retry_hint = DT_NOEND;
static TimestampTz lease_hint = DT_NOEND;
static char my_dbname[NAMEDATALEN];
static uint64 cancel_seen = 0;	/* our position in the cancel ring */

/* ----------------------------------------------------------------
 * Slot bookkeeping
 * ----------------------------------------------------------------
 */

static void
set_state(TaskqWorkerState state)
{
	my_slot->state = state;
}

/*
 * Publish the task whose handler is about to run, unless it was cancelled
 * after we claimed it (false: skip it), and mark it in our crash file.
 */
static bool
start_task(TaskqTask *task)
{
	/* published with current_task, under the lock taskq_start_task takes */
	my_slot->current_owner = task->owner;
	if (!taskq_start_task(my_slot, task->id, task->queue, task->timeout_ms, &cancel_seen))
		return false;
	taskq_suspect_file_write(MyDatabaseId, task->id);
	return true;
}

static void
end_task(void)
{
	taskq_end_task(my_slot);
	taskq_suspect_file_write(MyDatabaseId, 0);
}

/*
 * Set when a SIGTERM came from another process: someone stopped us on
 * purpose (the launcher, the postmaster, an operator's
 * pg_terminate_backend()).  A SIGTERM we sent ourselves is a handler's
 * pg_terminate_backend(pg_backend_pid()): the handler killing its worker.
 */
static volatile sig_atomic_t stopped_from_outside = false;

static void
dispatcher_sigterm(int signo, siginfo_t *info, void *context)
{
	if (info == NULL || info->si_pid != MyProcPid)
		stopped_from_outside = true;
	die(signo);
}

/* SIGTERM as die() handles it, but knowing who sent it. */
static void
set_sigterm_handler(void)
{
	struct sigaction act;

	memset(&act, 0, sizeof(act));
	act.sa_sigaction = dispatcher_sigterm;
	sigemptyset(&act.sa_mask);
	act.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(SIGTERM, &act, NULL) < 0)
		elog(FATAL, "taskq: could not set the SIGTERM handler: %m");
}

/*
 * Before exit, and before we leave the slot (see reap_orphans): a handler
 * that was running when we exited becomes a suspect.  If the launcher
 * terminated us because the handler ignored its timeout, a timeout one;
 * if it ignored a cancel(), none (its task is 'cancelled' already).  A
 * planned stop (the launcher marked the slot, or the SIGTERM came from
 * another process) charges nothing: the handler's subtransaction rolls
 * back and the task goes back to 'queued' as it was.  Else a crash one
 * (FATAL, e.g. it terminated its own backend).  The shared suspect
 * replaces the crash marker file, which only a crash keeps.
 */
static void
dispatcher_exit(int code, Datum arg)
{
	if (my_slot == NULL)
		return;
	if (!LWLockHeldByMe(taskq_lock()))
		LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
	if (my_slot->stop_task != 0)
	{
		if (my_slot->stop_cause == TASKQ_CAUSE_TIMEOUT)
			taskq_add_suspect(my_slot->dboid, my_slot->stop_task, TASKQ_CAUSE_TIMEOUT);
		my_slot->exit_reason = TASKQ_EXIT_STOPPED;
	}
	else if (my_slot->stop_cause == TASKQ_CAUSE_STOP || stopped_from_outside)
	{
		if (my_slot->current_task != 0)
			elog(LOG, "taskq: dispatcher stopped while running task " INT64_FORMAT "; the task is queued again without a charge",
				 my_slot->current_task);
	}
	else if (my_slot->current_task != 0)
		taskq_add_suspect(my_slot->dboid, my_slot->current_task, TASKQ_CAUSE_CRASH);
	/*
	 * Clear the marker before leaving the slot: the next dispatcher of this
	 * slot reuses the file, and must find it neither removed nor cleared
	 * under its own task.
	 */
	taskq_suspect_file_close();
	my_slot->pid = 0;
	my_slot->procno = -1;
	my_slot->current_task = 0;
	LWLockRelease(taskq_lock());
	taskq_count_dispatcher_exit();	/* after leaving the slot: see reap_orphans */
}

/*
 * SIGQUIT (the postmaster resetting after some process crashed, or an
 * immediate shutdown): our crash marker stays, flagged as a bystander's,
 * so that a reset charges the task we were running (shmem.c): its handler
 * may well have crashed that other process.
 */
static void
dispatcher_quickdie(SIGNAL_ARGS)
{
	taskq_suspect_file_mark_bystander();
	SignalHandlerForCrashExit(postgres_signal_arg);
}

static void
exit_because(TaskqExitReason reason)
{
	my_slot->exit_reason = reason;
	proc_exit(0);
}

/*
 * Whether DROP DATABASE or CREATE DATABASE ... TEMPLATE wants this
 * database to ourselves: they hold a lock on it that conflicts with the
 * one a new session takes.  If so we leave; they wait 5 s for us.
 */
static bool
database_wanted_elsewhere(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, MyDatabaseId, 0);
	if (LockAcquire(&tag, RowExclusiveLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, RowExclusiveLock, true);
	return false;
}

static void
between_batches(void)
{
	/*
	 * A cancel aimed at a handler that finished first arrives late; there
	 * is nothing to cancel now.
	 */
	QueryCancelPending = false;
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	if (my_slot->retire)
	{
		ereport(LOG,
				(errmsg("taskq dispatcher %d of executor \"%s\" in database \"%s\" leaves: the configuration no longer wants it",
						my_slot->index, my_slot->executor, my_dbname)));
		exit_because(TASKQ_EXIT_RETIRED);
	}
	if (database_wanted_elsewhere())
	{
		ereport(LOG,
				(errmsg("taskq dispatcher exiting so that database \"%s\" can be dropped or copied",
						my_dbname)));
		exit_because(TASKQ_EXIT_DATABASE_BUSY);
	}
}

/* ----------------------------------------------------------------
 * search_path
 *
 * Our own statements run under TASKQ_SAFE_SEARCH_PATH, set for the whole
 * session when the dispatcher starts, before any statement: the
 * search_path that ALTER DATABASE ... SET gives the session is the
 * database owner's choice, and the dispatcher runs as a superuser.  It is
 * set at session level (PGC_S_SESSION), which neither a reload nor a
 * lower source overrides, and which leaves the database's value as the
 * setting's reset value.
 *
 * A handler runs with that reset value (the search_path postgresql.conf
 * and ALTER DATABASE ... SET give sessions of this database, as in 0.1),
 * unless its function has its own SET search_path clause.  It is set in
 * the GUC nest level of the handler's call and undone with it, so that
 * neither it nor anything the handler sets (SET, set_config, RESET, for
 * the session or locally, returning or failing) reaches our next
 * statement.
 * ----------------------------------------------------------------
 */

static void
restrict_session_search_path(void)
{
	(void) set_config_option("search_path", TASKQ_SAFE_SEARCH_PATH,
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SET, true, 0, false);
}

/* Inside the handler's GUC nest level: the database's search_path. */
static void
set_handler_search_path(void)
{
	char	   *path = pstrdup(GetConfigOptionResetString("search_path"));

	(void) set_config_option("search_path", path,
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

/* ----------------------------------------------------------------
 * Transactions
 * ----------------------------------------------------------------
 */

static void
begin_tx(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

/*
 * Commit.  durable = false commits without waiting for the WAL flush,
 * for transactions whose loss in a crash is harmless or made good.
 */
static void
commit_tx(bool durable)
{
	int			save = synchronous_commit;

	SPI_finish();
	PopActiveSnapshot();
	if (!durable)
		synchronous_commit = SYNCHRONOUS_COMMIT_OFF;
	CommitTransactionCommand();
	synchronous_commit = save;
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Whether the extension exists here; checked in every transaction. */
static bool
extension_present(void)
{
	return OidIsValid(get_extension_oid("taskq", true));
}

/*
 * Leave unless the database's taskq objects are the version this library
 * serves: after the library is upgraded and before ALTER EXTENSION taskq
 * UPDATE, the old objects would fail our statements in a loop.  The
 * version found goes into our slot for the launcher's one log line; the
 * update's _wake_launcher() starts us again.  Checked when we start and
 * at each maintenance, in an open transaction.
 */
static void
check_extension_version(void)
{
	char	   *found = taskq_extension_version();

	if (found == NULL)
		exit_because(TASKQ_EXIT_NO_EXTENSION);
	if (strcmp(found, TASKQ_VERSION) == 0)
		return;
	LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
	strlcpy(my_slot->last_error, found, sizeof(my_slot->last_error));
	my_slot->last_error_owner = InvalidOid;
	LWLockRelease(taskq_lock());
	exit_because(TASKQ_EXIT_WRONG_VERSION);
}

/* ----------------------------------------------------------------
 * Maintenance
 * ----------------------------------------------------------------
 */

/*
 * Charge suspects and requeue orphans, in one statement (outbox.c): a task is an
 * orphan when it is 'running' but its dispatcher is gone.  An orphan whose
 * handler was running when its dispatcher died (a suspect) is charged one
 * attempt.  A crash is counted in crashes too, every one of them (DESIGN
 * §6): a reset drops every connection of every application, so bounding
 * the resets a poison task causes by max_attempts comes before sparing an
 * attempt to a task that an outside kill -9 happened to hit.  A handler
 * that ignored its timeout until the launcher terminated its dispatcher
 * is charged a timed-out attempt, not a crash: it ends 'timeout' after
 * its last attempt, and is retried after the backoff before.  The other
 * orphans were only claimed and go back as they were.  The suspect check
 * runs after the liveness check, and a dying dispatcher records its
 * suspect before it leaves its slot, so no suspect is requeued uncounted.
 *
 * A suspect may also be 'queued': its claim committed without waiting for
 * the WAL flush (taskq.synchronous_commit = off) and the crash took the
 * unflushed claim with it.  Its crash is counted all the same.  Every
 * dispatcher reaps before its first claim, so after a crash restart no
 * suspect is claimed again before it is charged.
 *
 * Orphans appear only when a dispatcher exits, so this runs when this
 * dispatcher starts and after any other has exited (a shared counter that
 * a dispatcher bumps after it has left its slot), not at every
 * maintenance.  That lets it scan the table instead of an index over
 * 'running' tasks, whose upkeep was a tenth of a drain's time.
 */
static uint64 exits_reaped = 0;
static bool reaped = false;

#define MAX_REAPED	64			/* suspects passed, charges forgotten, retries delayed */

/* A timed-out orphan with attempts left waits for its backoff. */
static void
delay_retry(int64 id, int attempts)
{
	int64		delay_ms = taskq_backoff_ms(attempts);

	taskq_outbox_delay(id, delay_ms);
	retry_hint = Min(retry_hint, TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms));
}

/*
 * Log and count one task that reaping touched.  True when it was charged
 * an attempt; an orphan that was only claimed goes back quietly.
 */
static bool
report_reaped(const TaskqReaped *r)
{
	bool		ended = strcmp(r->status, "queued") != 0;

	if (!r->charge)
	{
		elog(DEBUG1, "taskq: requeued task " INT64_FORMAT " claimed by a dispatcher that exited", r->id);
		return false;
	}
	if (r->crash)
		ereport(LOG,
				(errmsg("taskq: task " INT64_FORMAT " was running when its dispatcher exited abnormally; charged attempt %d, now %s",
						r->id, r->attempts, r->status)));
	else
		ereport(LOG,
				(errmsg("taskq: task " INT64_FORMAT " ignored its timeout until its dispatcher was terminated; charged attempt %d, now %s",
						r->id, r->attempts, r->status)));
	taskq_count_outcome(MyDatabaseId, r->queue, r->handler, 0, ended, !ended);
	return true;
}

/*
 * One reaper at a time per database, until its transaction ends: a reaper
 * that listed the suspects before another's charges committed would find a
 * charged suspect 'queued' and charge it again.  An advisory lock of ours
 * (field 4 is 3, which pg_advisory_lock() never uses).
 */
static void
lock_reaping(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0x7461736b, 0x72656170, 3);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/*
 * Reap (see above) when a dispatcher has exited since we last did, then
 * delay the retries of timed-out orphans and forget the suspects that are
 * charged or whose task ended otherwise (a suspect of a task that another
 * session finished would stay in the bounded list for ever).
 */
static void
reap_orphans(void)
{
	int64		suspects[MAX_REAPED];
	int			nsuspects;
	int64		charged[MAX_REAPED];
	int			ncharged = 0;
	int64		ended[MAX_REAPED];
	int			ndelayed = 0;
	TaskqReaped *rows;
	int			nrows;
	int			i;
	uint64		exits;

	exits = taskq_dispatcher_exits();	/* before the scan: later exits reap again */
	if (reaped && exits == exits_reaped)
		return;
	lock_reaping();
	nsuspects = taskq_list_suspects(MyDatabaseId, suspects, lengthof(suspects));
	nrows = taskq_outbox_reap(suspects, nsuspects, &rows);
	if (nrows > 0)
		taskq_request_wakeup_at_commit(TASKQ_WAKE_ALL); /* requeued: rewinds every cursor */
	for (i = 0; i < nrows; i++)
		if (report_reaped(&rows[i]) && ncharged < (int) lengthof(charged))
			charged[ncharged++] = rows[i].id;
	for (i = 0; i < nrows; i++)
		if (rows[i].charge && !rows[i].crash && strcmp(rows[i].status, "queued") == 0 &&
			ndelayed++ < MAX_REAPED)
			delay_retry(rows[i].id, rows[i].attempts);
	taskq_forget_suspects(MyDatabaseId, charged, ncharged);
	/* suspects whose task ended otherwise (or is gone) can never be charged */
	taskq_forget_suspects(MyDatabaseId, ended, taskq_outbox_ended(suspects, nsuspects, ended));
	reaped = true;
	exits_reaped = exits;
}

/* Count a notify task whose lease ran out: retried, or failed for good. */
static void
count_lease_expiry(const char *queue, const char *handler, bool failed)
{
	taskq_count_outcome(MyDatabaseId, queue, handler, 0, failed ? 1 : 0, failed ? 0 : 1);
	if (!failed)
		taskq_request_wakeup_at_commit(TASKQ_WAKE_ALL); /* requeued: rewinds every cursor */
}

/*
 * One maintenance pass: have every plan made again if the table's size
 * has changed much (see outbox.c); reap, redeliver or fail notify and
 * external tasks whose lease ran out or whose claiming session ended,
 * expire tasks past expires_at, remove ended tasks older than
 * taskq.retention, and have the claims planned again.
 */
static void
maintenance(void)
{
	set_state(TASKQ_STATE_MAINTENANCE);
	taskq_outbox_replan_on_growth();
	reap_orphans();
	taskq_outbox_expire_leases(count_lease_expiry);
	taskq_external_release_sessions(count_lease_expiry);
	taskq_outbox_expire_tasks();
	taskq_outbox_remove_ended(taskq_retention);
	taskq_outbox_forget_claim_plans();
	last_maintenance = GetCurrentTimestamp();
}

/* ----------------------------------------------------------------
 * Claim
 * ----------------------------------------------------------------
 */

static int
compare_tasks(const void *a, const void *b)
{
	const TaskqTask *x = a;
	const TaskqTask *y = b;

	if (x->priority != y->priority)
		return x->priority > y->priority ? -1 : 1;
	if (x->run_at != y->run_at)
		return x->run_at < y->run_at ? -1 : 1;
	return x->id < y->id ? -1 : (x->id > y->id ? 1 : 0);
}

/*
 * After a short batch, in the claim's transaction, read when something
 * next becomes due (*due, *lease; DT_NOEND after a full batch).  The read
 * sees what our earlier batches made due later, so their hints restart.
 */
static void
read_next_due(bool full, TimestampTz *due, TimestampTz *lease)
{
	*due = *lease = DT_NOEND;
	if (full)
		return;
	*due = taskq_outbox_next_due(lease);
	retry_hint = lease_hint = DT_NOEND;
}

/*
 * While a dispatcher drains limited queues, the plain claim, which must
 * step over them in the served queues' claim, runs at most every
 * PLAIN_RETRY_MS once it found nothing: a task of an unlimited queue
 * committed meanwhile waits that long at most, and a backlog of limited
 * tasks is not walked once per batch.
 */
#define PLAIN_RETRY_MS	100

static TimestampTz plain_empty_at = 0;

/*
 * What our executor serves, as this process's taskq.executors says
 * (reloaded between batches).  False when it names our executor no more,
 * or the launcher retires us: the launcher reads the same file, and until
 * it asks us to leave we claim nothing.
 */
static bool
my_executor(TaskqServed *served)
{
	int			pool = taskq_pool_find(my_slot->executor);

	if (pool < 0 || my_slot->retire)
		return false;
	taskq_pool_served(pool, served);
	served->batch_size = taskq_pool_batch_size(pool);
	return true;
}

/*
 * Fill the rest of a batch (tasks[n..]) from the limited queues that our
 * executor serves, each through its own claim, which locks the queue's
 * row and enforces its limits (share: the executor's workers); in name
 * order, the order every claimer locks them in.  Returns the new count.
 */
static int
claim_limited(const TaskqExclusions *ex, char **queues, const TaskqServed *served,
			  TaskqTask *tasks, int n)
{
	int			pool = taskq_pool_find(my_slot->executor);
	int			i;

	for (i = 0; i < ex->nlimited && n < served->batch_size; i++)
	{
		const char *executor = taskq_queue_executor(queues[i]);

		if (executor == NULL || strcmp(executor, my_slot->executor) != 0)
			continue;			/* another executor's queue */
		n += taskq_outbox_claim_queue(queues[i], served->batch_size - n,
									  taskq_pool_workers(pool), ex->handlers,
									  batch_ctx, tasks + n);
	}
	return n;
}

/*
 * Claim up to our executor's batch size of due tasks into batch_ctx: the
 * plain claim of the queues it serves, then its limited queues.  Returns how
 * many (expired ones included, marked), or -1 if the extension is gone.
 * *full says whether the batch was full, *limited how many came from
 * limited queues (in draining: the last batch had some, see
 * PLAIN_RETRY_MS).  A short batch means nothing else is due now; the same
 * transaction then reads when something next becomes due (*due, *lease:
 * see taskq_outbox_next_due()).
 */
static int
claim(bool draining, TaskqTask **tasks_out, bool *full, int *limited, TimestampTz *due,
	  TimestampTz *lease)
{
	TaskqExclusions ex;
	TaskqServed served = {0};
	TaskqTask  *tasks;
	char	  **limited_queues;
	int			n;
	int			plain = 0;
	bool		skip_plain;

	set_state(TASKQ_STATE_CLAIMING);
	/* before the snapshot: a commit that this claim misses sets it again */
	(void) pg_atomic_exchange_u32(&my_slot->wake_pending, 0);
	taskq_cursors_take_rewinds(my_slot);
	begin_tx("taskq: claiming tasks");
	if (!extension_present())
	{
		commit_tx(false);
		return -1;
	}
	cancel_seen = taskq_cancel_generation();
	if (!my_executor(&served))
	{
		commit_tx(false);
		*full = false;
		*limited = 0;
		*due = *lease = DT_NOEND;
		return 0;
	}
	taskq_outbox_read_exclusions(&ex);
	limited_queues = taskq_outbox_limited_queues(&ex);
	skip_plain = draining && ex.nlimited > 0 &&
		!TimestampDifferenceExceeds(plain_empty_at, GetCurrentTimestamp(), PLAIN_RETRY_MS);
	if (skip_plain)
		tasks = MemoryContextAllocZero(batch_ctx, sizeof(TaskqTask) * Max(served.batch_size, 1));
	else
	{
		taskq_cursors_prepare(&served);
		plain = taskq_outbox_claim(&served, &ex, batch_ctx, &tasks);
		if (plain == 0)
			plain_empty_at = GetCurrentTimestamp();
	}
	n = claim_limited(&ex, limited_queues, &served, tasks, plain);
	*limited = n - plain;
	*full = n == served.batch_size;
	read_next_due(*full, due, lease);
	if (!*full)
		taskq_external_wake_workers();	/* external tasks left due: notified at commit */

	/*
	 * A handler may take the server down.  If this commit is lost with the
	 * WAL buffers, the task is 'queued' again after the restart, but the
	 * crash marker (start_task) still names it, and reaping counts it.
	 */
	commit_tx(taskq_synchronous_commit);
	if (!skip_plain)
		taskq_cursors_advance(tasks, plain);

	qsort(tasks, plain, sizeof(TaskqTask), compare_tasks);
	*tasks_out = tasks;
	return n;
}

/* ----------------------------------------------------------------
 * Run
 * ----------------------------------------------------------------
 */

/* One trace line per dispatch decision; delay is run_at to handler start. */
static void
trace_dispatch(TaskqTask *task, TaskqHandler *h, TimestampTz start, const char *outcome)
{
	if (!taskq_trace)
		return;
	ereport(LOG,
			(errmsg("taskq: dispatch task=" INT64_FORMAT " handler=%s kind=%s queue=%s mode=async delay=" INT64_FORMAT "ms priority=%d attempt=%d outcome=%s",
					task->id, task->handler, h ? taskq_kind_name(h->kind) : "?",
					task->queue,
					(int64) (Max(start - task->run_at, 0) / 1000),
					task->priority, task->attempts + 1, outcome),
			 errhidestmt(true)));
}

/*
 * Record a handler's success inside its subtransaction.  False if the task
 * is no longer ours (cancelled meanwhile): the caller rolls back.
 *
 * With taskq.retention = 0 a completed task is deleted at once rather than
 * marked and removed by the next maintenance pass: one dead row version
 * instead of two, and no index entries for the completed one.
 */
static bool
record_success(TaskqTask *task, TaskqOutcome *out)
{
	bool		ours;

	if (taskq_retention == 0 && strcmp(out->status, "completed") == 0)
		return taskq_outbox_remove_completed(task->id);

	ours = taskq_outbox_complete(task->id, out, taskq_ack_timeout);
	if (strcmp(out->status, "dispatched") == 0)
		lease_hint = Min(lease_hint,
						 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), taskq_ack_timeout));
	return ours;
}

/*
 * Record a failed attempt: queued again after the backoff, or ended
 * ('failed', or 'timeout' when the last attempt timed out).  False if the
 * task is no longer ours (cancelled meanwhile).
 */
static bool
record_failure(TaskqTask *task, const char *error, bool timed_out)
{
	bool		final = task->attempts + 1 >= task->max_attempts;
	int64		delay_ms = final ? -1 : taskq_backoff_ms(task->attempts + 1);
	char	   *msg = pstrdup(error);

	if (strlen(msg) > TASKQ_ERROR_MAXLEN)
		msg[TASKQ_ERROR_MAXLEN] = '\0';
	if (!taskq_outbox_fail(task->id, msg, delay_ms, timed_out))
		return false;			/* cancelled meanwhile */
	if (!final)
	{
		retry_hint = Min(retry_hint, TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms));
		/* no later than the run_at written: see cursors.c */
		taskq_request_rewind_at_commit(task->queue, task->priority,
									   TimestampTzPlusMilliseconds(GetCurrentTransactionStartTimestamp(),
																   delay_ms));
	}

	LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
	my_slot->failed++;
	strlcpy(my_slot->last_error, msg, sizeof(my_slot->last_error));
	my_slot->last_error_owner = task->owner;
	my_slot->last_error_at = GetCurrentTimestamp();
	LWLockRelease(taskq_lock());
	taskq_count_outcome(MyDatabaseId, task->queue, task->handler, 0, final ? 1 : 0, final ? 0 : 1);
	return true;
}
/* Look a handler up once per run transaction. */
static TaskqHandler *
batch_handler(TaskqHandler *cache, int *ncache, const char *name)
{
	int			i;

	for (i = 0; i < *ncache; i++)
		if (strcmp(cache[i].name, name) == 0)
			return &cache[i];
	if (*ncache >= MAX_BATCH_HANDLERS)
		*ncache = 0;
	if (!taskq_lookup_handler(name, &cache[*ncache]))
		return NULL;
	return &cache[(*ncache)++];
}

/*
 * Whether the task may start, as an error if not: cancelled after we
 * claimed it (*cancelled set), its handler unregistered, or the role
 * that enqueued it dropped.  Publishes the task in our slot (start_task).
 */
static void
check_startable(TaskqTask *task, TaskqHandler *h, volatile bool *cancelled)
{
	if (!start_task(task))
	{
		*cancelled = true;
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("task " INT64_FORMAT " was cancelled before it started", task->id)));
	}
	if (h == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("handler \"%s\" is not registered", task->handler)));
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(task->owner)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the role that enqueued this task (OID %u) no longer exists", task->owner)));
}

/*
 * Run the handler as the task's owner, under its timeout and the
 * database's search_path, then go back to our role (save_userid,
 * save_sec) and settings and clear the task from our slot.
 *
 * As the owner, restricted: the session outlives the task and runs other
 * roles' handlers next, so a handler may not leave temporary objects or
 * session state behind for them (nor change role).  PostgreSQL runs
 * maintenance code the same way.
 */
static void
run_handler_as_owner(TaskqTask *task, TaskqHandler *h, Oid save_userid, int save_sec,
					 TaskqOutcome *out)
{
	int			gucnest;
	TimestampTz handler_start;

	SetUserIdAndSecContext(task->owner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	gucnest = NewGUCNestLevel();
	set_handler_search_path();
	handler_start = GetCurrentTimestamp();
	enable_timeout_after(STATEMENT_TIMEOUT, (int) task->timeout_ms);
	taskq_execute(task, h, false, out);
	disable_timeout(STATEMENT_TIMEOUT, false);
	AtEOXact_GUC(false, gucnest);	/* undo any SET the handler did, and ours */
	SetUserIdAndSecContext(save_userid, save_sec);
	end_task();					/* the handler is done: no deadline, no crash marker */

	/*
	 * A handler that trapped its timeout's error and returned anyway still
	 * timed out: its effects roll back.
	 */
	if (TimestampDifferenceExceeds(handler_start, GetCurrentTimestamp(), (int) task->timeout_ms))
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("task " INT64_FORMAT " returned after its timeout", task->id)));
}

/*
 * Record the handler's success in its subtransaction; a task cancelled
 * while it ran is an error instead (*cancelled set), which rolls the
 * handler's effects back.
 */
static void
keep_success(TaskqTask *task, TaskqOutcome *out, volatile bool *cancelled)
{
	if (!record_success(task, out))
	{
		*cancelled = true;
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("task " INT64_FORMAT " was cancelled while it ran", task->id)));
	}
	CHECK_FOR_INTERRUPTS();		/* a cancel signal that raced with us */
}

/*
 * After an error in the task's subtransaction: copy the error (returned),
 * roll the subtransaction back, and restore the memory context, resource
 * owner and role of the run transaction; the task leaves our slot.
 */
static ErrorData *
abandon_task(MemoryContext oldcontext, ResourceOwner oldowner, Oid save_userid, int save_sec)
{
	ErrorData  *edata;

	disable_timeout(STATEMENT_TIMEOUT, false);
	MemoryContextSwitchTo(oldcontext);
	edata = CopyErrorData();
	FlushErrorState();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(oldcontext);
	CurrentResourceOwner = oldowner;
	SetUserIdAndSecContext(save_userid, save_sec);
	end_task();

	/*
	 * A cancel or timeout signal that arrived while the handler's own error
	 * was unwinding is about this task, which is over: left pending, it
	 * would fail our statement recording the outcome, and the worker.
	 */
	QueryCancelPending = false;
	return edata;
}

/*
 * The task's handler failed, timed out or was cancelled: record a failed
 * attempt unless it was cancelled (cancel() ended it), and trace which.
 */
static void
record_error(TaskqTask *task, TaskqHandler *h, TimestampTz start, ErrorData *edata, bool cancelled)
{
	if (!cancelled)
	{
		bool		timed_out = edata->sqlerrcode == ERRCODE_QUERY_CANCELED &&
			TimestampDifferenceExceeds(start, GetCurrentTimestamp(), (int) task->timeout_ms);
		char	   *error = timed_out ?
			psprintf("timed out after " INT64_FORMAT " ms", task->timeout_ms) :
			edata->message;

		if (!record_failure(task, error, timed_out))
			cancelled = true;
		else
			trace_dispatch(task, h, start, timed_out ? "timeout" : "error");
	}
	if (cancelled)
		trace_dispatch(task, h, start, "cancelled");
	FreeErrorData(edata);
}

/*
 * Run one task in a subtransaction, as its owner, under its timeout, and
 * record the outcome.  Errors of the handler are caught and recorded;
 * errors recording them abort the whole run transaction (and the worker).
 */
static void
run_task(TaskqTask *task, TaskqHandler *h)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool cancelled = false;
	volatile bool ok = false;
	TimestampTz start = GetCurrentTimestamp();
	Oid			save_userid;
	int			save_sec;
	ErrorData  *edata = NULL;
	TaskqOutcome out;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);
	set_state(TASKQ_STATE_RUNNING);

	PG_TRY();
	{
		check_startable(task, h, &cancelled);
		run_handler_as_owner(task, h, save_userid, save_sec, &out);
		keep_success(task, &out, &cancelled);
		ReleaseCurrentSubTransaction();
		ok = true;
	}
	PG_CATCH();
	{
		edata = abandon_task(oldcontext, oldowner, save_userid, save_sec);
	}
	PG_END_TRY();

	/*
	 * From here on the handler's part is over: its effects are released
	 * into the run transaction (or rolled back), so an error below is ours
	 * and aborts the run transaction, never a failure of the handler.
	 */
	MemoryContextSwitchTo(oldcontext);
	CurrentResourceOwner = oldowner;
	/* session-level advisory locks a handler took must not outlive it */
	LockReleaseSession(USER_LOCKMETHOD);
	my_slot->processed++;		/* only we write it; readers tolerate a stale value */
	if (!ok)
		record_error(task, h, start, edata, cancelled);
	else
	{
		trace_dispatch(task, h, start, out.status);
		taskq_count_outcome(MyDatabaseId, task->queue, task->handler,
							strcmp(out.status, "completed") == 0, 0, 0);
	}
}

/*
 * Run a claimed batch.  The run transaction commits after the batch or
 * after RUN_TRANSACTION_MS, whichever comes first.
 */
static void
run_batch(TaskqTask *tasks, int n)
{
	int			i = 0;

	while (i < n)
	{
		TaskqHandler cache[MAX_BATCH_HANDLERS];
		int			ncache = 0;
		TimestampTz started;

		begin_tx("taskq: running tasks");
		started = GetCurrentTimestamp();
		for (; i < n; i++)
		{
			TaskqTask  *task = &tasks[i];

			if (task->expired)
			{
				trace_dispatch(task, NULL, GetCurrentTimestamp(), "expired");
				continue;
			}
			run_task(task, batch_handler(cache, &ncache, task->handler));
			if (TimestampDifferenceExceeds(started, GetCurrentTimestamp(), RUN_TRANSACTION_MS))
			{
				i++;
				break;
			}
		}
		commit_tx(taskq_synchronous_commit);
	}
	set_state(TASKQ_STATE_IDLE);
}

/* ----------------------------------------------------------------
 * Main loop
 * ----------------------------------------------------------------
 */

/*
 * Find work and do it: maintenance when due, the due schedules if we are
 * their firer (schedules.c), then batches while there is
 * more.  After a full batch we claim again at once.  After a short one
 * (nothing else was due when it was claimed) we claim again only if a
 * commit woke us meanwhile: wake_pending, not the latch, says so, since a
 * handler can reset our latch (pg_sleep, lock waits).  Returns when
 * nothing is due, with the time something next becomes due; exits if the
 * extension is gone.
 */
static TimestampTz
work(void)
{
	TimestampTz due = DT_NOEND;
	TimestampTz lease = DT_NOEND;
	int			limited = 0;
	TimestampTz tick = DT_NOEND;

	for (;;)
	{
		TaskqTask  *tasks;
		int			n;
		bool		full;
		TimestampTz now = GetCurrentTimestamp();

		/* recurring tasks (schedules.c): one dispatcher fires them */
		tick = taskq_schedules_tick(my_slot->index, my_slot->executor);

		if (now >= next_lease_expiry ||
			TimestampDifferenceExceeds(last_maintenance, now,
									   Min(MAINTENANCE_MS, taskq_poll_interval)))
		{
			begin_tx("taskq: maintenance");
			check_extension_version();
			maintenance();
			commit_tx(true);
			next_lease_expiry = DT_NOEND;
		}

		MemoryContextReset(batch_ctx);
		n = claim(limited > 0, &tasks, &full, &limited, &due, &lease);
		if (n < 0)
			exit_because(TASKQ_EXIT_NO_EXTENSION);
		if (n > 0)
			run_batch(tasks, n);

		/*
		 * Tasks of limited queues that ended make room under those limits:
		 * the other dispatchers look again, and so do we.
		 */
		if (limited > 0)
			taskq_wake_dispatchers(MyDatabaseId, TASKQ_WAKE_ALL);
		between_batches();
		if (!taskq_enabled)
			return DT_NOEND;
		if (full || limited > 0)
			continue;
		if (n > 0 && pg_atomic_read_u32(&my_slot->wake_pending) != 0)
			continue;
		break;
	}

	/* what our batches since the claim's next-due read made due later */
	due = Min(due, retry_hint);
	lease = Min(lease, lease_hint);
	set_state(TASKQ_STATE_IDLE);

	/*
	 * A lease that ran out needs maintenance; one that maintenance could
	 * not take yet (locked by an ack in flight) is looked at again soon,
	 * not in a tight loop.
	 */
	next_lease_expiry = lease;
	if (lease <= GetCurrentTimestamp())
		lease = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 10);
	return Min(Min(due, lease), tick);
}

void
taskq_dispatcher_main(Datum arg)
{
	TimestampTz next_work = 0;
	bool		latched = false;
	bool		polled = false; /* next_work is taskq.poll_interval's */

	my_slotno = DatumGetInt32(arg);
	my_slot = taskq_slot(my_slotno);

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	set_sigterm_handler();
	pqsignal(SIGQUIT, dispatcher_quickdie);
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
	if (!my_slot->in_use || my_slot->pid != 0)
	{
		LWLockRelease(taskq_lock());
		my_slot = NULL;
		proc_exit(0);			/* the launcher gave up this slot */
	}
	my_slot->pid = MyProcPid;
	my_slot->procno = MyProc->pgprocno;
	my_slot->started_at = GetCurrentTimestamp();
	my_slot->state = TASKQ_STATE_STARTING;
	my_slot->exit_reason = TASKQ_EXIT_ERROR;	/* until we know better */
	my_slot->current_task = 0;
	my_slot->current_owner = InvalidOid;
	my_slot->processed = my_slot->failed = 0;
	my_slot->last_error[0] = '\0';
	my_slot->last_error_owner = InvalidOid;
	LWLockRelease(taskq_lock());
	before_shmem_exit(dispatcher_exit, (Datum) 0);

	BackgroundWorkerInitializeConnectionByOid(my_slot->dboid, InvalidOid, 0);
	my_slot->exit_reason = TASKQ_EXIT_NONE;
	pgstat_report_appname("taskq dispatcher");
	taskq_suspect_file_open(my_slotno);

#ifdef __GLIBC__

	/*
	 * Each batch allocates and frees a few megabytes (plans, executor
	 * state).  glibc would hand them back to the kernel and take them again
	 * every batch, and on a multi-core machine each return costs a TLB
	 * shootdown on every CPU: about a tenth of a drain's time.  Keep them.
	 */
	mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
	mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
#endif
	batch_ctx = AllocSetContextCreate(TopMemoryContext, "taskq batch", ALLOCSET_DEFAULT_SIZES);
	StartTransactionCommand();
	restrict_session_search_path();
	strlcpy(my_dbname, get_database_name(MyDatabaseId), sizeof(my_dbname));
	check_extension_version();
	CommitTransactionCommand();
	elog(DEBUG1, "taskq dispatcher %d of executor \"%s\" started in database \"%s\"",
		 my_slot->index, my_slot->executor, my_dbname);

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		int			rc;

		if (now >= next_work)
		{
			TimestampTz due = DT_NOEND;

			/*
			 * Woken by taskq.poll_interval, not a commit or a due time:
			 * claim from the start, for tasks whose commit said nothing
			 * (COMMIT PREPARED).
			 */
			if (polled && !latched)
				taskq_cursors_forget();
			latched = false;
			if (taskq_enabled)
				due = work();
			else
				set_state(TASKQ_STATE_DISABLED);
			now = GetCurrentTimestamp();
			next_work = TimestampTzPlusMilliseconds(now, taskq_poll_interval);
			polled = due >= next_work;
			if (due < next_work)
				next_work = due;
		}

		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   Max(1, Min(LOCK_CHECK_MS, (next_work - now + 999) / 1000)),
					   PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		between_batches();
		if (rc & WL_LATCH_SET)
		{
			next_work = 0;		/* a commit woke us: look now */
			latched = true;
		}
	}
}
