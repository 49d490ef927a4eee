/*-------------------------------------------------------------------------
 *
 * tasks.c
 *	  Operations on existing tasks and queues: cancel(), retry(), ack(),
 *	  nack(), wait(), pause() and resume().
 *
 * Writes run as the owner of taskq.tasks, on the tasks the caller may act
 * on: a role manages the tasks it enqueued (and those of roles whose
 * privileges it has); ack() and nack() also accept the role that
 * registered the task's handler, which is how a listener service
 * acknowledges other roles' tasks.
 *
 * Unknown task ids are errors; a task that is no longer in the state the
 * call needs returns false.  A task the caller may not act on is answered
 * exactly as an unknown id (same message, SQLSTATE and hint, and without
 * waiting for its row lock), so no call tells a role whether another
 * role's task exists.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(taskq_cancel);
PG_FUNCTION_INFO_V1(taskq_retry);
PG_FUNCTION_INFO_V1(taskq_ack);
PG_FUNCTION_INFO_V1(taskq_ack_many);
PG_FUNCTION_INFO_V1(taskq_nack);
PG_FUNCTION_INFO_V1(taskq_wait);
PG_FUNCTION_INFO_V1(taskq_pause);
PG_FUNCTION_INFO_V1(taskq_resume);

static SPIPlanPtr lock_plan = NULL;
static SPIPlanPtr cancel_plan = NULL;
static SPIPlanPtr retry_plan = NULL;
static SPIPlanPtr live_dupe_plan = NULL;
static SPIPlanPtr nack_plan = NULL;
static SPIPlanPtr lock_many_plan = NULL;
static SPIPlanPtr ack_many_plan = NULL;
static SPIPlanPtr wait_plan = NULL;
static SPIPlanPtr pause_plan = NULL;
static SPIPlanPtr resume_plan = NULL;

/* A task row, locked, as the operations need it. */
typedef struct LockedTask
{
	int64		id;
	char	   *status;
	Oid			owner;
	char	   *handler;
	char	   *queue;
	char	   *dedupe_key;
	int			attempts;
	int			max_attempts;
	bool		lapsed;			/* its lease ran out: no longer the holder's */
} LockedTask;

static int64
id_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("task id must not be NULL"),
				 errhint("Pass the id that taskq.enqueue() returned.")));
	return PG_GETARG_INT64(0);
}

static void task_not_found(int64 id) pg_attribute_noreturn();

/*
 * The one answer for a task id that does not exist and for one that the
 * caller may not see or act on: the two must be indistinguishable.
 */
static void
task_not_found(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("task " INT64_FORMAT " does not exist", id),
			 errhint("A role sees only its own tasks; ended tasks are removed after taskq.retention.")));
}

/*
 * Who may act on a task, as a condition on t (taskq.tasks) and h (its
 * handler, LEFT JOINed): $2 is the caller, $3 whether the handler's owner
 * may act too.  Checked in the statement that locks the rows, so that a
 * task the caller may not act on is neither locked nor waited for.
 */
#define MAY_ACT \
	" (pg_catalog.pg_has_role($2, t.owner::pg_catalog.oid, 'USAGE')" \
	"  OR ($3 AND h.owner IS NOT NULL" \
	"      AND pg_catalog.pg_has_role($2, h.owner::pg_catalog.oid, 'USAGE')))"

/*
 * Lock a task that the caller may act on (see MAY_ACT), or raise "does not
 * exist".  Runs as the owner of taskq.tasks.
 */
static void
lock_task(int64 id, Oid caller, bool handler_owner_may, LockedTask *t)
{
	Oid			types[3] = {INT8OID, OIDOID, BOOLOID};
	Datum		values[3] = {Int64GetDatum(id), ObjectIdGetDatum(caller),
	BoolGetDatum(handler_owner_may)};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	if (SPI_execute_plan(taskq_prepare(&lock_plan,
									   "SELECT t.status::pg_catalog.text, t.owner::pg_catalog.oid,"
									   " t.handler, t.queue, t.dedupe_key,"
									   " t.attempts, t.max_attempts,"
									   " COALESCE(t.lease_until OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp(), false)"
									   " FROM taskq.tasks t LEFT JOIN taskq.handlers h"
									   "   ON h.name OPERATOR(pg_catalog.=) t.handler"
									   " WHERE t.id OPERATOR(pg_catalog.=) $1 AND" MAY_ACT
									   " FOR UPDATE OF t",
									   3, types),
						 values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.tasks");
	if (SPI_processed == 0)
		task_not_found(id);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	t->id = id;
	t->status = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
	t->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
	t->handler = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
	t->queue = TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull));
	d = SPI_getbinval(tup, desc, 5, &isnull);
	t->dedupe_key = isnull ? NULL : TextDatumGetCString(d);
	t->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
	t->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
	t->lapsed = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
}

static bool
status_is(const LockedTask *t, const char *a, const char *b, const char *c)
{
	return strcmp(t->status, a) == 0 || (b && strcmp(t->status, b) == 0) ||
		(c && strcmp(t->status, c) == 0);
}

/*
 * taskq.cancel(id): a queued or dispatched task ends 'cancelled'; a
 * running one too, and its handler is interrupted when this transaction
 * commits (its effects roll back with it).
 */
Datum
taskq_cancel(PG_FUNCTION_ARGS)
{
	int64		id = id_arg(fcinfo);
	Oid			caller = taskq_caller();
	TaskqAsOwner save;
	LockedTask	t;
	bool		done = false;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};

	SPI_connect();
	taskq_become_owner(&save);
	lock_task(id, caller, false, &t);
	if (status_is(&t, "queued", "running", "dispatched"))
	{
		if (SPI_execute_plan(taskq_prepare(&cancel_plan,
										   "UPDATE taskq.tasks SET status = 'cancelled',"
										   " finished_at = pg_catalog.now(), lease_until = NULL"
										   " WHERE id OPERATOR(pg_catalog.=) $1",
										   1, types),
							 values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "taskq: could not cancel task " INT64_FORMAT, id);
		if (strcmp(t.status, "running") == 0)
			taskq_request_interrupt_at_commit(id);
		done = true;
	}
	taskq_restore_user(&save);
	SPI_finish();
	PG_RETURN_BOOL(done);
}

/*
 * retry() of a task with a dedupe key: refuse while another live task of
 * the same role holds the key, naming it.  (Keys are per enqueuing role,
 * as in tasks_dedupe_idx, so the task named is always one the task's
 * owner can see.)
 */
static void
refuse_if_key_live(const LockedTask *t)
{
	Oid			types[3] = {TEXTOID, TEXTOID, OIDOID};
	Datum		values[3];
	bool		isnull;

	values[0] = CStringGetTextDatum(t->handler);
	values[1] = CStringGetTextDatum(t->dedupe_key);
	values[2] = ObjectIdGetDatum(t->owner);
	if (SPI_execute_plan(taskq_prepare(&live_dupe_plan,
									   "SELECT id FROM taskq.tasks WHERE handler OPERATOR(pg_catalog.=) $1"
									   " AND dedupe_key OPERATOR(pg_catalog.=) $2"
									   " AND owner::pg_catalog.oid OPERATOR(pg_catalog.=) $3"
									   " AND status " TASKQ_SQL_LIVE,
									   3, types),
						 values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.tasks");
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("cannot retry task " INT64_FORMAT ": task " INT64_FORMAT " with the same dedupe_key is still live",
						t->id, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull))),
				 errhint("Wait for that task to end, or cancel it.")));
}

/*
 * Queue an ended task again.  With a dedupe key, a concurrent enqueue of
 * the same key may commit between our check and our update; the unique
 * index then refuses the update, which we turn into the same message as
 * the check's (in a subtransaction, so the error is ours to report).
 */
static void
requeue_for_retry(const LockedTask *t)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(t->id)};
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool conflict = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);
	PG_TRY();
	{
		if (SPI_execute_plan(taskq_prepare(&retry_plan,
										   "UPDATE taskq.tasks SET status = 'queued', attempts = 0,"
										   " run_at = pg_catalog.now(), started_at = NULL, finished_at = NULL,"
										   " lease_until = NULL, worker_pid = NULL,"
										   " expires_at = CASE WHEN expires_at OPERATOR(pg_catalog.<=) pg_catalog.now() THEN NULL ELSE expires_at END"
										   " WHERE id OPERATOR(pg_catalog.=) $1",
										   1, types),
							 values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "taskq: could not retry task " INT64_FORMAT, t->id);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION || t->dedupe_key == NULL)
			PG_RE_THROW();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
		conflict = true;
	}
	PG_END_TRY();
	if (conflict)
		refuse_if_key_live(t);
}

/*
 * retry() makes an ended task live again: only while its handler is
 * registered, holding the handler's lock as enqueue() does, so that an
 * unregister_handler() in flight cannot miss it (it ends the handler's
 * live tasks) and no later registration of the name inherits it.
 */
static void
refuse_if_handler_gone(const LockedTask *t)
{
	TaskqHandler h;

	if (!taskq_lookup_handler_locked(t->handler, &h))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("cannot retry task " INT64_FORMAT ": handler \"%s\" is not registered",
						t->id, t->handler),
				 errhint("Register the handler again, then retry the task.")));
}

/*
 * taskq.retry(id): an ended, unsuccessful task is queued again now, with
 * a fresh attempt budget.  Its last error is kept until the next attempt.
 */
Datum
taskq_retry(PG_FUNCTION_ARGS)
{
	int64		id = id_arg(fcinfo);
	Oid			caller = taskq_caller();
	TaskqAsOwner save;
	LockedTask	t;
	bool		done = false;

	SPI_connect();
	taskq_become_owner(&save);
	lock_task(id, caller, false, &t);
	if (status_is(&t, "failed", "cancelled", "timeout") || status_is(&t, "expired", NULL, NULL))
	{
		refuse_if_handler_gone(&t);
		if (t.dedupe_key != NULL)
			refuse_if_key_live(&t);
		requeue_for_retry(&t);
		taskq_request_wakeup_at_commit(1);
		done = true;
	}
	taskq_restore_user(&save);
	SPI_finish();
	PG_RETURN_BOOL(done);
}

/*
 * Complete the dispatched tasks among ids, storing the call's result
 * (argument 1): ack() and ack_many().  ack_many() lets a listener
 * acknowledge what it has received so far in one transaction (one WAL
 * flush) instead of one each.  The tasks are locked in id order, so that
 * two callers cannot deadlock.  Returns the ids that were awaiting an
 * acknowledgement and are now completed, in id order; the others (unknown,
 * not the caller's to acknowledge, not dispatched, or whose lease ran out
 * even if maintenance has not requeued them yet) are left as they are,
 * except that with must_exist (ack() of that one id) an unknown id is an
 * error.  A task the caller may not acknowledge counts as unknown.
 */
static ArrayType *
acknowledge(ArrayType *ids, FunctionCallInfo fcinfo, const int64 *must_exist)
{
	Oid			caller = taskq_caller();
	TaskqAsOwner save;
	int			i;
	int			nacked = 0;
	Datum	   *acked;
	char	  **queues;
	char	  **handlers;
	Oid			types[3] = {INT8ARRAYOID, OIDOID, BOOLOID};
	Oid			ack_types[2] = {INT8ARRAYOID, JSONBOID};
	Datum		values[3];
	char		nulls[2] = {' ', ' '};
	ArrayType  *result;
	MemoryContext callctx = CurrentMemoryContext;
	MemoryContext oldcontext;

	SPI_connect();
	taskq_become_owner(&save);
	values[0] = PointerGetDatum(ids);
	values[1] = ObjectIdGetDatum(caller);
	values[2] = BoolGetDatum(true);
	if (SPI_execute_plan(taskq_prepare(&lock_many_plan,
									   "SELECT t.id, CASE WHEN t.lease_until OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()"
									   "   THEN 'lapsed' ELSE t.status::pg_catalog.text END, t.handler, t.queue"
									   " FROM taskq.tasks t LEFT JOIN taskq.handlers h"
									   "   ON h.name OPERATOR(pg_catalog.=) t.handler"
									   " WHERE t.id OPERATOR(pg_catalog.=) ANY ($1) AND" MAY_ACT
									   " ORDER BY t.id FOR UPDATE OF t",
									   3, types),
						 values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.tasks");
	if (must_exist != NULL && SPI_processed == 0)
		task_not_found(*must_exist);

	acked = MemoryContextAlloc(callctx, sizeof(Datum) * Max(SPI_processed, 1));
	queues = MemoryContextAlloc(callctx, sizeof(char *) * Max(SPI_processed, 1));
	handlers = MemoryContextAlloc(callctx, sizeof(char *) * Max(SPI_processed, 1));
	for (i = 0; i < (int) SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		if (strcmp(TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull)), "dispatched") != 0)
			continue;
		acked[nacked] = SPI_getbinval(tup, desc, 1, &isnull);
		handlers[nacked] = MemoryContextStrdup(callctx, TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull)));
		queues[nacked] = MemoryContextStrdup(callctx, TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull)));
		nacked++;
	}

	/* in the caller's context: SPI_finish frees ours */
	oldcontext = MemoryContextSwitchTo(callctx);
	result = construct_array(acked, nacked, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	MemoryContextSwitchTo(oldcontext);
	if (nacked > 0)
	{
		values[0] = PointerGetDatum(result);
		values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
		nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';
		if (SPI_execute_plan(taskq_prepare(&ack_many_plan,
										   "UPDATE taskq.tasks SET status = 'completed', result = $2,"
										   " finished_at = pg_catalog.now(), lease_until = NULL"
										   " WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
										   2, ack_types),
							 values, nulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "taskq: could not acknowledge tasks");
		for (i = 0; i < nacked; i++)
			taskq_count_outcome(MyDatabaseId, queues[i], handlers[i], 1, 0, 0);
	}
	taskq_restore_user(&save);
	SPI_finish();
	return result;
}

Datum
taskq_ack_many(PG_FUNCTION_ARGS)
{
	Datum	   *elems;
	bool	   *elem_nulls;
	int			nelems;
	int			i;

	ArrayType  *ids;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("task ids must not be NULL"),
				 errhint("Pass an array of the ids of the notify messages received.")));
	ids = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(ids) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("task ids must be a one-dimensional array"),
				 errhint("Pass ARRAY[id, ...], the ids of the notify messages received.")));
	deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &elem_nulls, &nelems);
	for (i = 0; i < nelems; i++)
		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("task ids must not contain NULL (element %d is NULL)", i + 1),
					 errhint("Pass an array of the ids of the notify messages received.")));
	PG_RETURN_ARRAYTYPE_P(acknowledge(ids, fcinfo, NULL));
}

/*
 * taskq.ack(id, result): ack_many() of one task, except that an unknown id
 * is an error.  True if the task was awaiting an acknowledgement.
 */
Datum
taskq_ack(PG_FUNCTION_ARGS)
{
	int64		id = id_arg(fcinfo);
	Datum		elem = Int64GetDatum(id);
	ArrayType  *acked;

	acked = acknowledge(construct_array(&elem, 1, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
										TYPALIGN_DOUBLE),
						fcinfo, &id);
	PG_RETURN_BOOL(ArrayGetNItems(ARR_NDIM(acked), ARR_DIMS(acked)) > 0);
}

/*
 * taskq.nack(id, error, retry_in): the dispatched attempt failed.  The
 * task is queued again after retry_in (or the backoff) while attempts
 * remain, else it ends 'failed'.
 */
Datum
taskq_nack(PG_FUNCTION_ARGS)
{
	int64		id = id_arg(fcinfo);
	Oid			caller = taskq_caller();
	TaskqAsOwner save;
	LockedTask	t;
	bool		done = false;
	int64		delay_ms;
	char	   *error;
	Oid			types[3] = {INT8OID, TEXTOID, INT8OID};
	Datum		values[3];

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("error must not be NULL"),
				 errhint("Say why the attempt failed; it is stored as the task's last_error.")));
	error = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (strlen(error) > TASKQ_ERROR_MAXLEN)
		error[TASKQ_ERROR_MAXLEN] = '\0';
	delay_ms = PG_ARGISNULL(2) ? -1 : taskq_interval_ms("retry_in", PG_GETARG_INTERVAL_P(2), true);

	SPI_connect();
	taskq_become_owner(&save);
	lock_task(id, caller, true, &t);
	/* a lapsed lease is lost even before maintenance has requeued it */
	if (status_is(&t, "dispatched", NULL, NULL) && !t.lapsed)
	{
		bool		final = t.attempts >= t.max_attempts;

		if (delay_ms < 0)
			delay_ms = taskq_backoff_ms(t.attempts);
		values[0] = Int64GetDatum(id);
		values[1] = CStringGetTextDatum(error);
		values[2] = Int64GetDatum(final ? -1 : delay_ms);
		if (SPI_execute_plan(taskq_prepare(&nack_plan,
										   "UPDATE taskq.tasks SET last_error = $2, lease_until = NULL,"
										   " status = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN 'failed' ELSE 'queued' END::taskq.status,"
										   " finished_at = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN pg_catalog.now() END,"
										   " run_at = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN run_at"
										   "   ELSE pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $3 OPERATOR(pg_catalog./) 1000.0) END"
										   " WHERE id OPERATOR(pg_catalog.=) $1",
										   3, types),
							 values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "taskq: could not reject task " INT64_FORMAT, id);
		taskq_count_outcome(MyDatabaseId, t.queue, t.handler, 0, final ? 1 : 0, final ? 0 : 1);
		if (!final)
			taskq_request_wakeup_at_commit(1);
		done = true;
	}
	taskq_restore_user(&save);
	SPI_finish();
	PG_RETURN_BOOL(done);
}

/*
 * taskq.wait(id, timeout): poll the task, sleeping on our latch between
 * looks (1 ms doubling to 50 ms), until it ends or the timeout passes;
 * return its row either way.  Reads as the caller, so a role waits only
 * on tasks it can see (under our fixed search_path, though).
 */
Datum
taskq_wait(PG_FUNCTION_ARGS)
{
	int64		id = id_arg(fcinfo);
	int64		timeout_ms;
	TimestampTz deadline;
	long		sleep_ms = 1;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	Datum		row;
	int			gucnest;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timeout must not be NULL"),
				 errhint("Omit it to wait up to 30 seconds.")));
	timeout_ms = taskq_interval_ms("timeout", PG_GETARG_INTERVAL_P(1), true);
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("taskq.wait() cannot be used in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("Its snapshot would never show the task ending."),
				 errhint("Call it in a READ COMMITTED transaction.")));
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	SPI_connect();
	gucnest = taskq_restrict_search_path();
	for (;;)
	{
		bool		isnull;
		bool		ended;
		TransactionId xmin;

		if (SPI_execute_plan(taskq_prepare(&wait_plan,
										   "SELECT t, NOT (t.status " TASKQ_SQL_LIVE "), t.xmin"
										   " FROM taskq.tasks t WHERE t.id OPERATOR(pg_catalog.=) $1",
										   1, types),
							 values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "taskq: could not read taskq.tasks");
		if (SPI_processed == 0)
			task_not_found(id);
		row = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		ended = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		xmin = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
		if (ended || GetCurrentTimestamp() >= deadline)
			break;
		if (TransactionIdIsCurrentTransactionId(xmin))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("task " INT64_FORMAT " was changed in this transaction and cannot run before it commits", id),
					 errhint("Commit first, then call taskq.wait().")));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		sleep_ms = Min(sleep_ms * 2, 50);
	}
	taskq_restore_search_path(gucnest);
	row = SPI_datumTransfer(row, false, -1);
	SPI_finish();
	PG_RETURN_DATUM(row);
}

static char *
queue_arg(FunctionCallInfo fcinfo)
{
	char	   *queue;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue must not be NULL"),
				 errhint("Pass a queue name, such as 'default'.")));
	queue = text_to_cstring(PG_GETARG_TEXT_PP(0));
	taskq_check_name("queue", queue);
	return queue;
}

static void
set_queue_paused(const char *queue, bool paused)
{
	TaskqAsOwner save;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(queue);
	SPI_connect();
	taskq_become_owner(&save);
	if (paused)
		SPI_execute_plan(taskq_prepare(&pause_plan,
									   "INSERT INTO taskq.queues (name, paused, paused_at)"
									   " VALUES ($1, true, pg_catalog.now())"
									   " ON CONFLICT (name) DO UPDATE SET paused = true,"
									   " paused_at = COALESCE(taskq.queues.paused_at, pg_catalog.now())",
									   1, types),
						 values, NULL, false, 0);
	else
		SPI_execute_plan(taskq_prepare(&resume_plan,
									   "UPDATE taskq.queues SET paused = false, paused_at = NULL"
									   " WHERE name OPERATOR(pg_catalog.=) $1",
									   1, types),
						 values, NULL, false, 0);
	taskq_restore_user(&save);
	SPI_finish();
	if (!paused)
		taskq_request_wakeup_at_commit(TASKQ_WAKE_ALL);
}

/* taskq.pause(queue): dispatchers stop claiming its tasks. */
Datum
taskq_pause(PG_FUNCTION_ARGS)
{
	set_queue_paused(queue_arg(fcinfo), true);
	PG_RETURN_VOID();
}

/* taskq.resume(queue) */
Datum
taskq_resume(PG_FUNCTION_ARGS)
{
	set_queue_paused(queue_arg(fcinfo), false);
	PG_RETURN_VOID();
}
