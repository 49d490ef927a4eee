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
 * The statements and the decoding of their rows are outbox.c's; this file
 * keeps the rules: which status allows what, the errors, the wake-ups and
 * counters.
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

/*
 * The argument id of cancel(), retry(), ack(), nack() and wait(): NULL is
 * refused with the same words by all of them.
 */
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
 * Lock a task that the caller may act on (see outbox.c's MAY_ACT), or
 * raise "does not exist".  Runs as the owner of taskq.tasks.
 */
static void
lock_task(int64 id, Oid caller, bool handler_owner_may, TaskqLockedTask *t)
{
	if (!taskq_outbox_lock_task(id, caller, handler_owner_may, t))
		task_not_found(id);
}

/* Whether the locked task's status is one of a, b, c (NULLs ignored). */
static bool
status_is(const TaskqLockedTask *t, const char *a, const char *b, const char *c)
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
	TaskqLockedTask	t;
	bool		done = false;

	SPI_connect();
	taskq_become_owner(&save);
	lock_task(id, caller, false, &t);
	if (status_is(&t, "queued", "running", "dispatched") || status_is(&t, "waiting", NULL, NULL))
	{
		taskq_outbox_cancel(id);
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
refuse_if_key_live(const TaskqLockedTask *t)
{
	int64		holder = taskq_outbox_live_holder(t->handler, cstring_to_text(t->dedupe_key),
												  t->owner);

	if (holder != 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("cannot retry task " INT64_FORMAT ": task " INT64_FORMAT " with the same dedupe_key is still live",
						t->id, holder),
				 errhint("Wait for that task to end, or cancel it.")));
}

/*
 * Queue an ended task again.  With a dedupe key, a concurrent enqueue of
 * the same key may commit between our check and our update; the unique
 * index then refuses the update, which we turn into the same message as
 * the check's (in a subtransaction, so the error is ours to report).  Any
 * other error is rethrown only after our subtransaction is rolled back:
 * rethrown from inside it, a caller that catches errors (a PL/pgSQL
 * EXCEPTION block) would roll back our subtransaction instead of its own
 * and go on in a transaction state that is not the one it thinks.
 */
static void
requeue_for_retry(const TaskqLockedTask *t)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool conflict = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);
	PG_TRY();
	{
		taskq_outbox_requeue(t->id);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION || t->dedupe_key == NULL)
			ReThrowError(edata);
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
refuse_if_handler_gone(const TaskqLockedTask *t)
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
	TaskqLockedTask	t;
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
 * not the caller's to acknowledge, not dispatched) are left as they are,
 * except that with must_exist (ack() of that one id) an unknown id is an
 * error.  A task the caller may not acknowledge counts as unknown.
 */
static ArrayType *
acknowledge(ArrayType *ids, FunctionCallInfo fcinfo, const int64 *must_exist)
{
	Oid			caller = taskq_caller();
	TaskqAsOwner save;
	TaskqAckable *rows;
	int			nrows;
	int			i;
	int			nacked = 0;
	Datum	   *acked;
	ArrayType  *result;
	MemoryContext callctx = CurrentMemoryContext;
	MemoryContext oldcontext;

	SPI_connect();
	taskq_become_owner(&save);
	nrows = taskq_outbox_lock_ackable(PointerGetDatum(ids), caller, &rows);
	if (must_exist != NULL && nrows == 0)
		task_not_found(*must_exist);

	acked = palloc(sizeof(Datum) * Max(nrows, 1));
	for (i = 0; i < nrows; i++)
		if (rows[i].dispatched)
			acked[nacked++] = Int64GetDatum(rows[i].id);

	/* in the caller's context: SPI_finish frees ours */
	oldcontext = MemoryContextSwitchTo(callctx);
	result = construct_array(acked, nacked, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	MemoryContextSwitchTo(oldcontext);
	if (nacked > 0)
	{
		taskq_outbox_ack(PointerGetDatum(result),
						 PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1), PG_ARGISNULL(1));
		for (i = 0; i < nrows; i++)
			if (rows[i].dispatched)
				taskq_count_outcome(MyDatabaseId, rows[i].queue, rows[i].handler, 1, 0, 0);
	}
	taskq_restore_user(&save);
	SPI_finish();
	return result;
}

/*
 * taskq.ack_many(ids, result): acknowledge what a listener received, in
 * one call; see acknowledge().  The ids must be a one-dimensional array
 * without NULLs.
 */
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
	TaskqLockedTask	t;
	bool		done = false;
	int64		delay_ms;
	char	   *error;

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
		taskq_outbox_nack(id, error, final ? -1 : delay_ms);
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
		bool		found;
		bool		ended;
		TransactionId xmin;

		row = taskq_outbox_poll(id, &found, &ended, &xmin);
		if (!found)
			task_not_found(id);
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

/* The queue argument of pause() and resume(), checked as a name. */
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

/*
 * pause() and resume(), as the owner of taskq.queues (application roles
 * may not write it); a resume wakes the dispatchers at commit, since the
 * queue's tasks may be due.
 */
static void
set_queue_paused(const char *queue, bool paused)
{
	TaskqAsOwner save;

	SPI_connect();
	taskq_become_owner(&save);
	taskq_outbox_set_paused(queue, paused);
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
