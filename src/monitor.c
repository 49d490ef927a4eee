/*-------------------------------------------------------------------------
 *
 * monitor.c
 *	  The functions behind taskq.workers and taskq.stats, and the small
 *	  internal functions the install script and dispatchers call.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "catalog/pg_authid.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(taskq_list_workers);
PG_FUNCTION_INFO_V1(taskq_list_counters);
PG_FUNCTION_INFO_V1(taskq_dispatcher_alive);
PG_FUNCTION_INFO_V1(taskq_wake_launcher);
PG_FUNCTION_INFO_V1(taskq_crash_suspect);
PG_FUNCTION_INFO_V1(taskq_orphan_cause);

/*
 * Set up a materialized set-returning call: a tuplestore in the query's
 * memory and the expected row shape.
 */
void
taskq_materialize(FunctionCallInfo fcinfo, Tuplestorestate **store, TupleDesc *desc)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext old;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	if (get_call_result_type(fcinfo, NULL, desc) != TYPEFUNC_COMPOSITE)
		*desc = rsinfo->expectedDesc;
	*desc = CreateTupleDescCopy(*desc);
	*store = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = *store;
	rsinfo->setDesc = *desc;
	MemoryContextSwitchTo(old);
}

static const char *
state_name(TaskqWorkerState state)
{
	switch (state)
	{
		case TASKQ_STATE_STARTING:
			return "starting";
		case TASKQ_STATE_IDLE:
			return "idle";
		case TASKQ_STATE_CLAIMING:
			return "claiming";
		case TASKQ_STATE_RUNNING:
			return "running";
		case TASKQ_STATE_MAINTENANCE:
			return "maintenance";
		case TASKQ_STATE_DISABLED:
			return "disabled";
	}
	return "?";
}

/*
 * Whether the caller may see what a worker holds of role owner's tasks
 * (its current task, its last error): as taskq.tasks' row-level security
 * lets a role see the tasks of roles whose privileges it has, and as
 * pg_stat_statements shows query text to pg_read_all_stats.  all says the
 * caller has pg_read_all_stats (superusers do).  InvalidOid is no role's:
 * taskq's own messages, shown to everyone.
 */
static bool
may_see_owner(bool all, Oid owner)
{
	return all || !OidIsValid(owner) || has_privs_of_role(GetUserId(), owner);
}

/*
 * The columns of taskq._workers(): 0.2 added executor and wakeups, the
 * last ones.  A database still at 0.1 declares two fewer;
 * tuplestore_putvalues() takes only the columns the declared row has.
 */
#define WORKER_COLUMNS	15

/*
 * taskq._workers(): the launcher, then one row per live dispatcher.
 * Another role's current task shows as NULL (with its queue and start)
 * and its last error as '<insufficient privilege>', as pg_stat_activity
 * shows another role's query; the counts are shown to everyone.
 */
Datum
taskq_list_workers(PG_FUNCTION_ARGS)
{
	Tuplestorestate *store;
	TupleDesc	desc;
	int			i,
				n = 0;
	pid_t		launcher = taskq_launcher_pid();
	TaskqSlot  *copy;
	uint64	   *wakeups;		/* atomics are read in place, not copied */
	bool		all = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);

	taskq_materialize(fcinfo, &store, &desc);
	if (launcher != 0)
	{
		Datum		values[WORKER_COLUMNS] = {0};
		bool		nulls[WORKER_COLUMNS];

		memset(nulls, true, sizeof(nulls));
		values[0] = Int32GetDatum(launcher);
		nulls[0] = false;
		values[1] = CStringGetTextDatum("launcher");
		nulls[1] = false;
		values[5] = CStringGetTextDatum("running");
		nulls[5] = false;
		tuplestore_putvalues(store, desc, values, nulls);
	}
	if (taskq_slot_count() == 0)
		return (Datum) 0;

	/* copy under the lock; look names up after releasing it */
	copy = palloc(sizeof(TaskqSlot) * taskq_slot_count());
	wakeups = palloc(sizeof(uint64) * taskq_slot_count());
	LWLockAcquire(taskq_lock(), LW_SHARED);
	for (i = 0; i < taskq_slot_count(); i++)
	{
		if (taskq_slot(i)->in_use && taskq_slot(i)->pid != 0)
		{
			wakeups[n] = pg_atomic_read_u64(&taskq_slot(i)->wakeups);
			copy[n++] = *taskq_slot(i);
		}
	}
	LWLockRelease(taskq_lock());

	for (i = 0; i < n; i++)
	{
		TaskqSlot  *s = &copy[i];
		Datum		values[WORKER_COLUMNS] = {0};
		bool		nulls[WORKER_COLUMNS] = {false};
		char	   *dbname = get_database_name(s->dboid);
		bool		no_task = s->current_task == 0 || !may_see_owner(all, s->current_owner);

		values[0] = Int32GetDatum(s->pid);
		values[1] = CStringGetTextDatum("dispatcher");
		values[2] = DirectFunctionCall1(namein, CStringGetDatum(dbname ? dbname : "?"));
		values[3] = Int32GetDatum(s->index);
		values[4] = CStringGetTextDatum(s->current_queue);
		nulls[4] = no_task;
		values[5] = CStringGetTextDatum(state_name(s->state));
		values[6] = Int64GetDatum(s->current_task);
		nulls[6] = no_task;
		values[7] = TimestampTzGetDatum(s->task_started_at);
		nulls[7] = no_task;
		values[8] = TimestampTzGetDatum(s->started_at);
		values[9] = Int64GetDatum(s->processed);
		values[10] = Int64GetDatum(s->failed);
		values[11] = CStringGetTextDatum(may_see_owner(all, s->last_error_owner) ?
										 s->last_error : "<insufficient privilege>");
		nulls[11] = s->last_error[0] == '\0';
		values[12] = TimestampTzGetDatum(s->last_error_at);
		nulls[12] = s->last_error[0] == '\0';
		values[13] = CStringGetTextDatum(s->executor);
		values[14] = Int64GetDatum((int64) wakeups[i]);
		tuplestore_putvalues(store, desc, values, nulls);
	}
	return (Datum) 0;
}

/* taskq._counters(): outcome counters of this database since start. */
Datum
taskq_list_counters(PG_FUNCTION_ARGS)
{
	Tuplestorestate *store;
	TupleDesc	desc;

	taskq_materialize(fcinfo, &store, &desc);
	(void) taskq_read_counters(MyDatabaseId, store, desc);
	return (Datum) 0;
}

/*
 * taskq._dispatcher_alive(pid, since): whether a dispatcher with this pid,
 * started no later than since, runs in this database.  A task whose
 * dispatcher is not alive is an orphan (see dispatcher.c).
 */
Datum
taskq_dispatcher_alive(PG_FUNCTION_ARGS)
{
	int32		pid = PG_GETARG_INT32(0);
	TimestampTz since = PG_GETARG_TIMESTAMPTZ(1);
	bool		alive = false;
	int			i;

	if (taskq_slot_count() == 0)
		PG_RETURN_BOOL(false);
	LWLockAcquire(taskq_lock(), LW_SHARED);
	for (i = 0; i < taskq_slot_count() && !alive; i++)
	{
		TaskqSlot  *s = taskq_slot(i);

		alive = s->in_use && s->pid == pid && s->dboid == MyDatabaseId &&
			s->started_at <= since;
	}
	LWLockRelease(taskq_lock());
	PG_RETURN_BOOL(alive);
}

/* taskq._wake_launcher(): see the end of the install script. */
Datum
taskq_wake_launcher(PG_FUNCTION_ARGS)
{
	taskq_request_launcher_wakeup_at_commit();
	PG_RETURN_VOID();
}

/* taskq._crash_suspect(id): whether the task's handler was running when
 * its dispatcher crashed (see shmem.c).  0.1's; reaping now asks
 * taskq._orphan_cause(). */
Datum
taskq_crash_suspect(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(taskq_suspect_cause(MyDatabaseId, PG_GETARG_INT64(0)) == TASKQ_CAUSE_CRASH);
}

/*
 * taskq._orphan_cause(id): why the task's handler ended with its
 * dispatcher, 'crash' or 'timeout' (the launcher stopped a handler that
 * ignored its timeout), or NULL if it did not: what reaping charges the
 * task (dispatcher.c).
 */
Datum
taskq_orphan_cause(PG_FUNCTION_ARGS)
{
	switch (taskq_suspect_cause(MyDatabaseId, PG_GETARG_INT64(0)))
	{
		case TASKQ_CAUSE_CRASH:
			PG_RETURN_TEXT_P(cstring_to_text("crash"));
		case TASKQ_CAUSE_TIMEOUT:
			PG_RETURN_TEXT_P(cstring_to_text("timeout"));
		case TASKQ_CAUSE_NONE:
		case TASKQ_CAUSE_CANCEL:
		case TASKQ_CAUSE_STOP:
			break;
	}
	PG_RETURN_NULL();
}
