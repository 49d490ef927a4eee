/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: decides which databases get dispatchers, starts them,
 *	  and starts them again when they exit.
 *
 * The launcher is a static background worker that starts when recovery
 * has finished, so dispatchers run only on a primary (and start after a
 * promotion).  It connects to no database and reads pg_database to turn
 * taskq.databases into OIDs.  Dispatchers are dynamic workers that never
 * restart by themselves; the launcher restarts them according to why they
 * exited (see TaskqExitReason):
 *
 *	no extension	in 10 s, or at once when CREATE EXTENSION commits there
 *	wrong version	the same, for ALTER EXTENSION taskq UPDATE
 *	database busy	in 1 s (DROP DATABASE or a template copy wanted it)
 *	stopped			at once (we stopped a handler that overran, see below)
 *	error or crash	after a backoff doubling from 1 s to 1 min
 *	no worker slot	after a backoff doubling from 100 ms to 5 s, and at
 *					once when one of our dispatchers exits
 *
 * so a misconfigured database costs a log line, not a restart loop.
 *
 * The launcher also enforces handler timeouts and cancels.  A handler can
 * trap the error its timeout or a cancel() raises and run on, holding its
 * dispatcher forever.  Each slot says by when its handler must have
 * stopped (its timeout plus taskq.interrupt_grace, or a cancel plus the
 * grace); past that we terminate the dispatcher, the way
 * pg_terminate_backend() does: a FATAL error, which no handler can trap.
 * We never SIGKILL, which would reset the whole server: a handler stuck
 * where no interrupt is checked keeps its dispatcher.
 *
 * Worker slots.  Dispatchers, the launcher, parallel query workers,
 * logical replication and other extensions' workers all come out of
 * max_worker_processes, and PostgreSQL says only that a registration
 * failed, not how many slots are free.  So the launcher does not ration
 * them: it logs what taskq needs against max_worker_processes (once per
 * setting), logs the dispatchers that could not start (once, until they
 * all run), retries them promptly, and publishes the databases left with
 * no dispatcher at all, for enqueue()'s warning.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/logicallauncher.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#define RETRY_NO_EXTENSION_MS	10000
#define RETRY_BUSY_MS			1000
#define RETRY_ERROR_MIN_MS		1000
#define RETRY_ERROR_MAX_MS		60000
#define RETRY_NO_SLOT_MIN_MS	100
#define RETRY_NO_SLOT_MAX_MS	5000
#define LAUNCHER_NAP_MS			10000

/* What the launcher knows of one wanted dispatcher. */
typedef struct Wanted
{
	Oid			dboid;
	char		executor[TASKQ_NAME_MAXLEN + 1];
	int			pool;			/* the executor's number in taskq.executors now */
	int			index;			/* which of its workers */
	bool		retiring;		/* asked to leave between batches */
	int			slot;			/* -1 when not running */
	BackgroundWorkerHandle *handle;
	TimestampTz next_start;
	int			failures;
	TaskqExitReason last_exit;
	bool		seen;			/* still wanted in this pass */
	bool		no_slot;		/* its last start found no worker slot */
	int			no_slot_tries;	/* starts in a row that found none */
} Wanted;

static Wanted *wanted = NULL;
static int	nwanted = 0;
static int	maxwanted = 0;

/* Databases we already logged about, so each problem is one log line. */
static List *logged_problems = NIL;

/* The shortage of worker slots last logged: dispatchers that could not start. */
static int	logged_no_slot = 0;

/* The taskq.databases count and taskq.workers that the sizing line was for. */
static int	sized_databases = -1;
static int	sized_workers = -1;

/* Names and OIDs of the databases seen, for log lines. */
static List *db_names = NIL;
static List *db_oids = NIL;

/* Register the launcher at _PG_init; the postmaster restarts it if it dies. */
void
taskq_register_launcher(void)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 1;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "taskq");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "taskq_launcher_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "taskq launcher");
	snprintf(w.bgw_type, BGW_MAXLEN, "taskq launcher");
	RegisterBackgroundWorker(&w);
}

/* On exit, say in shared memory that no launcher runs (taskq.workers shows it). */
static void
launcher_exit(int code, Datum arg)
{
	taskq_set_launcher(false);
}

/* Log a problem with a database once, until it goes away. */
static void
log_once(const char *key, const char *fmt, const char *dbname)
{
	ListCell   *lc;
	MemoryContext old;

	foreach(lc, logged_problems)
	{
		if (strcmp((char *) lfirst(lc), key) == 0)
			return;
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	logged_problems = lappend(logged_problems, pstrdup(key));
	MemoryContextSwitchTo(old);
	ereport(LOG, (errmsg(fmt, dbname)));
}

/*
 * The line for a database whose taskq objects are at another version than
 * this library serves.  The version found is data, never part of a format.
 */
static char *
wrong_version_message(const char *dbname, const char *found)
{
	return psprintf("taskq: extension taskq in database \"%s\" is at version %s, but the installed library serves version %s; "
					"its dispatchers wait, and start when ALTER EXTENSION taskq UPDATE runs there",
					dbname, found, TASKQ_VERSION);
}

/* Forget the version lines logged for a database (its version changed). */
static void
forget_version_problems(Oid dboid)
{
	ListCell   *lc;
	char		prefix[32];

	snprintf(prefix, sizeof(prefix), "version:%u:", dboid);
	foreach(lc, logged_problems)
	{
		if (strncmp((char *) lfirst(lc), prefix, strlen(prefix)) == 0)
			logged_problems = foreach_delete_current(logged_problems, lc);
	}
}

/* A problem that went away may be logged again if it comes back. */
static void
forget_problem(const char *key)
{
	ListCell   *lc;

	foreach(lc, logged_problems)
	{
		if (strcmp((char *) lfirst(lc), key) == 0)
		{
			logged_problems = foreach_delete_current(logged_problems, lc);
			return;
		}
	}
}

/*
 * The entry for one (database, executor, index) dispatcher in the wanted
 * list, added if new: the list is what the launcher starts and keeps.
 */
static Wanted *
find_wanted(Oid dboid, int pool, int index)
{
	int			i;
	const char *executor = taskq_pool_name(pool);

	for (i = 0; i < nwanted; i++)
		if (wanted[i].dboid == dboid && wanted[i].index == index &&
			strcmp(wanted[i].executor, executor) == 0)
		{
			wanted[i].pool = pool;
			return &wanted[i];
		}
	if (nwanted == maxwanted)
	{
		maxwanted = Max(16, maxwanted * 2);
		wanted = wanted ?
			repalloc(wanted, sizeof(Wanted) * maxwanted) :
			MemoryContextAlloc(TopMemoryContext, sizeof(Wanted) * maxwanted);
	}
	memset(&wanted[nwanted], 0, sizeof(Wanted));
	wanted[nwanted].dboid = dboid;
	wanted[nwanted].index = index;
	wanted[nwanted].pool = pool;
	strlcpy(wanted[nwanted].executor, executor, sizeof(wanted[nwanted].executor));
	wanted[nwanted].slot = -1;
	return &wanted[nwanted++];
}

/*
 * Resolve taskq.databases to the OIDs of databases that can run
 * dispatchers, logging (once) the names that cannot.  Connected to no
 * database, we read pg_database with a plain catalog scan, as the
 * autovacuum launcher does: its caches are not available to us.
 */
static List *
wanted_databases(void)
{
	char	   *raw = pstrdup(taskq_databases ? taskq_databases : "");
	List	   *names;
	List	   *oids = NIL;
	ListCell   *lc;

	MemoryContext old;

	if (!SplitGUCList(raw, ',', &names))
		return NIL;				/* the check hook refuses this */

	list_free_deep(db_names);
	list_free(db_oids);
	db_names = NIL;
	db_oids = NIL;
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	foreach(lc, names)
	{
		char	   *name = lfirst(lc);
		char		key[NAMEDATALEN + 16];
		Relation	rel;
		TableScanDesc scan;
		HeapTuple	tup;
		bool		found = false;
		bool		usable = false;
		Oid			dboid = InvalidOid;

		rel = table_open(DatabaseRelationId, AccessShareLock);
		scan = table_beginscan_catalog(rel, 0, NULL);
		while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

			if (strcmp(NameStr(db->datname), name) == 0)
			{
				found = true;
				dboid = db->oid;
				usable = db->datallowconn && !db->datistemplate;
				break;
			}
		}
		table_endscan(scan);
		table_close(rel, AccessShareLock);

		snprintf(key, sizeof(key), "missing:%s", name);
		if (!found)
		{
			log_once(key, "taskq: database \"%s\" named in taskq.databases does not exist; no dispatcher runs for it", name);
			continue;
		}
		forget_problem(key);
		snprintf(key, sizeof(key), "unusable:%s", name);
		if (!usable)
		{
			log_once(key, "taskq: database \"%s\" named in taskq.databases is a template or does not allow connections; no dispatcher runs for it", name);
			continue;
		}
		forget_problem(key);
		old = MemoryContextSwitchTo(TopMemoryContext);
		oids = lappend_oid(oids, dboid);
		db_names = lappend(db_names, pstrdup(name));
		db_oids = lappend_oid(db_oids, dboid);
		MemoryContextSwitchTo(old);
	}
	CommitTransactionCommand();
	list_free(names);
	pfree(raw);
	return oids;
}

/* The name under which taskq.databases named dboid. */
static const char *
database_name(Oid dboid)
{
	ListCell   *a,
			   *b;

	forboth(a, db_names, b, db_oids)
	{
		if (lfirst_oid(b) == dboid)
			return lfirst(a);
	}
	return "?";
}

/* Take a free slot for w's dispatcher; -1 if none. */
static int
take_slot(const Wanted *w)
{
	int			i;
	int			found = -1;

	LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
	for (i = 0; i < taskq_slot_count(); i++)
	{
		TaskqSlot  *s = taskq_slot(i);

		if (!s->in_use)
		{
			taskq_clear_slot(s);
			s->in_use = true;
			s->dboid = w->dboid;
			s->index = w->index;
			s->pool = w->pool;
			strlcpy(s->executor, w->executor, sizeof(s->executor));
			s->procno = -1;
			found = i;
			break;
		}
	}
	LWLockRelease(taskq_lock());
	return found;
}

/* Give a worker slot back, once its dispatcher is gone or never started. */
static void
free_slot(int slot)
{
	LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
	taskq_slot(slot)->in_use = false;
	taskq_slot(slot)->pid = 0;
	LWLockRelease(taskq_lock());
}

/*
 * No worker slot for w: try again soon, sooner than after an error, since
 * parallel query frees its slots within a query's time.
 */
static void
no_slot_for(Wanted *w)
{
	int64		delay = (int64) RETRY_NO_SLOT_MIN_MS << Min(w->no_slot_tries, 6);

	w->no_slot = true;
	w->no_slot_tries++;
	w->next_start = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												Min(delay, RETRY_NO_SLOT_MAX_MS));
}

/*
 * Start w's dispatcher in a slot of ours and a background worker slot;
 * without either it is tried again soon (no_slot_for).
 */
static void
start_dispatcher(Wanted *w)
{
	BackgroundWorker bw;
	int			slot = take_slot(w);

	if (slot < 0)
	{
		no_slot_for(w);
		return;
	}
	memset(&bw, 0, sizeof(bw));
	bw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bw.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(bw.bgw_library_name, BGW_MAXLEN, "taskq");
	snprintf(bw.bgw_function_name, BGW_MAXLEN, "taskq_dispatcher_main");
	snprintf(bw.bgw_name, BGW_MAXLEN, "taskq dispatcher %s/%d for database %u",
			 w->executor, w->index, w->dboid);
	snprintf(bw.bgw_type, BGW_MAXLEN, "taskq dispatcher");
	bw.bgw_main_arg = Int32GetDatum(slot);
	bw.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&bw, &w->handle))
	{
		free_slot(slot);
		w->handle = NULL;
		no_slot_for(w);
		return;
	}
	w->slot = slot;
	w->no_slot = false;
	w->no_slot_tries = 0;
}

/*
 * The background worker slots taskq needs: the launcher and every
 * executor's workers in each usable database of taskq.databases.
 */
static int
slots_needed(int ndatabases)
{
	return 1 + ndatabases * taskq_pool_total_workers();
}

/*
 * Once per value of taskq.databases and the executors' sizes: say how many
 * worker slots taskq takes of max_worker_processes, and how to size it
 * when parallel query would be left short.
 */
static void
log_sizing(int ndatabases)
{
	int			need = slots_needed(ndatabases);
	int			logrep = max_logical_replication_workers > 0 ? 1 : 0;

	int			workers = taskq_pool_total_workers();

	if (ndatabases == sized_databases && workers == sized_workers)
		return;
	sized_databases = ndatabases;
	sized_workers = workers;
	if (need + logrep + max_parallel_workers <= max_worker_processes)
		return;
	ereport(need + logrep > max_worker_processes ? WARNING : LOG,
			(errmsg("taskq needs %d of max_worker_processes = %d background worker slots: 1 launcher + %d database(s) x %d dispatchers (taskq.workers and the workers of taskq.executors)",
					need, max_worker_processes, ndatabases, workers),
			 errdetail("Parallel query (max_parallel_workers = %d), logical replication and other extensions take their workers from the same slots.",
					   max_parallel_workers),
			 errhint("Set max_worker_processes to at least %d (taskq) + %d (max_parallel_workers) + %d (logical replication launcher) + what other extensions use, and restart.",
					 need, max_parallel_workers, logrep)));
}

/*
 * Log the dispatchers that found no worker slot, once per shortage (again
 * only when it grows), and when they all run again; publish the databases
 * that have no dispatcher at all.
 */
static void
report_no_slot(void)
{
	int			i,
				j;
	int			waiting = 0;
	int			nseen = 0;
	int			nstarved = 0;
	Oid		   *starved = palloc(sizeof(Oid) * Max(nwanted, 1));

	for (i = 0; i < nwanted; i++)
	{
		Wanted	   *w = &wanted[i];
		bool		db_runs = false;
		bool		db_short = false;
		bool		listed = false;

		if (!w->seen)
			continue;
		nseen++;
		if (w->slot < 0 && w->no_slot)
			waiting++;
		for (j = 0; j < nstarved && !listed; j++)
			listed = starved[j] == w->dboid;
		if (listed)
			continue;
		for (j = 0; j < nwanted; j++)
		{
			if (!wanted[j].seen || wanted[j].dboid != w->dboid)
				continue;
			db_runs |= wanted[j].slot >= 0;
			db_short |= wanted[j].slot < 0 && wanted[j].no_slot;
		}
		if (db_short && !db_runs)
			starved[nstarved++] = w->dboid;
	}
	taskq_set_starved(starved, nstarved);
	pfree(starved);

	if (waiting > logged_no_slot)
		ereport(WARNING,
				(errmsg("taskq: %d of %d dispatchers could not start: no background worker slot is free (max_worker_processes = %d)",
						waiting, nseen, max_worker_processes),
				 errdetail("%d database(s) have no dispatcher at all; their tasks wait.", nstarved),
				 errhint("Set max_worker_processes to at least %d (taskq: 1 launcher + every executor's workers per database) + max_parallel_workers (%d) + what other extensions use, and restart.  taskq keeps trying meanwhile.",
						 1 + nseen, max_parallel_workers)));
	else if (waiting == 0 && logged_no_slot > 0)
		ereport(LOG, (errmsg("taskq: no dispatcher waits for a background worker slot any more")));
	logged_no_slot = waiting;
}

/*
 * A dispatcher stopped: free its slot and decide when to start it again.
 */
static void
dispatcher_stopped(Wanted *w)
{
	TaskqSlot  *s = taskq_slot(w->slot);
	TaskqExitReason reason = s->exit_reason;
	TimestampTz ran_since = s->started_at;
	TimestampTz now = GetCurrentTimestamp();
	char		key[64];
	char		version_key[64 + sizeof(s->last_error)];
	int64		delay;

	/* a dispatcher that left for its version wrote the version it found */
	snprintf(version_key, sizeof(version_key), "version:%u:%s", w->dboid,
			 reason == TASKQ_EXIT_WRONG_VERSION ? s->last_error : "");

	free_slot(w->slot);
	w->slot = -1;
	if (w->handle)
		pfree(w->handle);
	w->handle = NULL;

	snprintf(key, sizeof(key), "noext:%u", w->dboid);
	switch (reason)
	{
		case TASKQ_EXIT_NO_EXTENSION:
			if (w->index == 0)
				log_once(key, "taskq: extension taskq is not installed in database \"%s\"; its dispatchers start when CREATE EXTENSION taskq runs there",
						 database_name(w->dboid));
			delay = RETRY_NO_EXTENSION_MS;
			w->failures = 0;
			break;
		case TASKQ_EXIT_WRONG_VERSION:
			if (w->index == 0)
			{
				char	   *msg = wrong_version_message(database_name(w->dboid), s->last_error);

				log_once(version_key, "%s", msg);
				pfree(msg);
			}
			delay = RETRY_NO_EXTENSION_MS;
			w->failures = 0;
			break;
		case TASKQ_EXIT_DATABASE_BUSY:
			delay = RETRY_BUSY_MS;
			w->failures = 0;
			break;
		case TASKQ_EXIT_STOPPED:
			delay = 0;			/* the handler was at fault, not the dispatcher */
			break;
		case TASKQ_EXIT_RETIRED:
			delay = 0;			/* wanted again only if its executor came back */
			w->failures = 0;
			break;
		default:
			/* an error or a crash; if it ran a good while, it was not a loop */
			if (ran_since != 0 && TimestampDifferenceExceeds(ran_since, now, RETRY_ERROR_MAX_MS))
				w->failures = 0;
			delay = RETRY_ERROR_MIN_MS << Min(w->failures, 6);
			delay = Min(delay, RETRY_ERROR_MAX_MS);
			w->failures++;
			break;
	}
	if (reason != TASKQ_EXIT_NO_EXTENSION)
		forget_problem(key);
	if (reason != TASKQ_EXIT_WRONG_VERSION)
		forget_version_problems(w->dboid);
	w->last_exit = reason;
	w->next_start = TimestampTzPlusMilliseconds(now, delay);
}

/*
 * Slots a previous launcher left (it exited, its dispatchers did not):
 * ask those dispatchers to exit; free_untracked_slots() frees each slot
 * once its dispatcher has left it.
 */
static void
end_old_dispatchers(void)
{
	int			i;

	LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
	for (i = 0; i < taskq_slot_count(); i++)
	{
		TaskqSlot  *s = taskq_slot(i);

		if (s->in_use && s->pid != 0)
		{
			s->stop_cause = TASKQ_CAUSE_STOP;	/* planned: charges nothing */
			(void) kill(s->pid, SIGTERM);
		}
	}
	LWLockRelease(taskq_lock());
}

/*
 * Slots whose dispatcher is neither wanted nor running (its start failed,
 * or it exited): free them, so they do not leak with every retry.
 */
static void
free_untracked_slots(void)
{
	int			i,
				j;

	LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
	for (i = 0; i < taskq_slot_count(); i++)
	{
		TaskqSlot  *s = taskq_slot(i);
		bool		tracked = false;

		for (j = 0; j < nwanted && !tracked; j++)
			tracked = wanted[j].slot == i;
		if (s->in_use && s->pid == 0 && !tracked)
			s->in_use = false;
	}
	LWLockRelease(taskq_lock());
}

/*
 * Terminate the dispatchers whose handlers still run past their deadline,
 * noting in the slot which task and why, so that the dispatcher's exit
 * records the task as timed out or cancelled rather than crashed.  The
 * signal is sent under the lock that a dispatcher takes to end its task,
 * so it cannot reach one that has moved on unnoticed.  Returns the next
 * deadline of a handler that runs now.
 */
static TimestampTz
stop_overrunning_handlers(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = DT_NOEND;
	int			i;

	LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
	for (i = 0; i < taskq_slot_count(); i++)
	{
		TaskqSlot  *s = taskq_slot(i);

		if (!s->in_use || s->pid == 0 || s->current_task == 0 || s->stop_task != 0 ||
			s->stop_cause == TASKQ_CAUSE_STOP)
			continue;
		if (s->task_deadline > now)
		{
			next = Min(next, s->task_deadline);
			continue;
		}
		s->stop_task = s->current_task;
		s->stop_cause = s->task_cancelled ? TASKQ_CAUSE_CANCEL : TASKQ_CAUSE_TIMEOUT;
		ereport(LOG,
				(errmsg("taskq: the handler of task " INT64_FORMAT " in database \"%s\" did not stop within taskq.interrupt_grace (%d ms) after its %s; terminating its dispatcher (PID %d)",
						s->stop_task, database_name(s->dboid), taskq_interrupt_grace,
						s->task_cancelled ? "cancel" : "timeout", (int) s->pid)));
		if (kill(s->pid, SIGTERM) != 0)
			ereport(LOG,
					(errmsg("taskq: could not terminate dispatcher %d: %m", (int) s->pid)));
	}
	LWLockRelease(taskq_lock());
	return next;
}

/*
 * Ask w's dispatcher, no longer wanted (its executor shrank or went, or
 * its database left taskq.databases), to leave between batches: its
 * running tasks finish first.  One that has not started yet finds the
 * flag before its first claim.  If it is wanted again before it leaves
 * (a quick reload back), the flag is taken back.
 */
static void
retire(Wanted *w)
{
	TaskqSlot  *s = taskq_slot(w->slot);

	LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
	s->retire = true;
	if (s->procno >= 0)
		SetLatch(&ProcGlobal->allProcs[s->procno].procLatch);
	LWLockRelease(taskq_lock());
	w->retiring = true;
}

/* w is wanted again before its dispatcher left: it stays. */
static void
unretire(Wanted *w)
{
	if (w->slot >= 0)
	{
		LWLockAcquire(taskq_lock(), LW_EXCLUSIVE);
		taskq_slot(w->slot)->retire = false;
		LWLockRelease(taskq_lock());
	}
	w->retiring = false;
}

/*
 * One pass: start what is wanted and due, stop what is no longer wanted,
 * notice what stopped.  Returns when the next pass is needed.
 */
static TimestampTz
reconcile(void)
{
	List	   *dbs = wanted_databases();
	ListCell   *lc;
	int			i;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = TimestampTzPlusMilliseconds(now, LAUNCHER_NAP_MS);
	bool		slot_freed = false;

	free_untracked_slots();
	log_sizing(list_length(dbs));
	for (i = 0; i < nwanted; i++)
		wanted[i].seen = false;
	foreach(lc, dbs)
	{
		Oid			dboid = lfirst_oid(lc);
		bool		ext_created = taskq_take_extension_wakeup(dboid);

		int			pool;

		for (pool = 0; pool < taskq_pool_count(); pool++)
		{
			for (i = 0; i < taskq_pool_workers(pool); i++)
			{
				Wanted	   *w = find_wanted(dboid, pool, i);

				w->seen = true;
				if (ext_created && (w->last_exit == TASKQ_EXIT_NO_EXTENSION ||
									w->last_exit == TASKQ_EXIT_WRONG_VERSION))
					w->next_start = 0;
			}
		}
	}

	for (i = 0; i < nwanted; i++)
	{
		Wanted	   *w = &wanted[i];
		pid_t		pid;

		if (w->slot >= 0 && w->handle != NULL &&
			GetBackgroundWorkerPid(w->handle, &pid) == BGWH_STOPPED)
		{
			dispatcher_stopped(w);
			slot_freed = true;
		}
	}

	for (i = 0; i < nwanted; i++)
	{
		Wanted	   *w = &wanted[i];

		/* a dispatcher of ours left its worker slot: try the slot now */
		if (slot_freed && w->slot < 0 && w->no_slot)
			w->next_start = now;
		if (!w->seen)
		{
			if (w->slot >= 0 && !w->retiring)
				retire(w);
			continue;
		}
		if (w->retiring)
			unretire(w);
		if (w->slot < 0 && now >= w->next_start)
			start_dispatcher(w);
		if (w->slot < 0 && w->next_start < next)
			next = w->next_start;
	}

	/* drop entries that are neither wanted nor running */
	for (i = 0; i < nwanted;)
	{
		if (!wanted[i].seen && wanted[i].slot < 0)
			wanted[i] = wanted[--nwanted];
		else
			i++;
	}
	report_no_slot();
	list_free(dbs);
	return next;
}

/*
 * The launcher: start, retire and restart the dispatchers that
 * taskq.databases and taskq.executors ask for, until shutdown.
 */
void
taskq_launcher_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("taskq launcher");
	taskq_set_launcher(true);
	before_shmem_exit(launcher_exit, (Datum) 0);
	end_old_dispatchers();
	ereport(LOG, (errmsg("taskq launcher started")));

	for (;;)
	{
		TimestampTz next;
		long		wait_ms;

		/* while we look, every handler that starts wakes us (shmem.c) */
		taskq_set_launcher_pass(DT_NOEND);
		next = reconcile();
		next = Min(next, stop_overrunning_handlers());
		taskq_set_launcher_pass(next);

		wait_ms = (long) ((next - GetCurrentTimestamp() + 999) / 1000);
		if (wait_ms < 1)
			wait_ms = 1;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}
