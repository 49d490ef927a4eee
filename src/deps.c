/*-------------------------------------------------------------------------
 *
 * deps.c
 *	  Dependencies between tasks: enqueue(..., after => ids), the task
 *	  that is running now (taskq.current_task()), and what explain() says
 *	  of a waiting task.
 *
 * A task enqueued after live tasks is written 'waiting', with one row per
 * (parent, child) in taskq.task_deps, and each parent is marked
 * has_dependants.  Releasing and cancelling waiting tasks is the job of
 * the trigger taskq._deps_status_changed() (the update script), which
 * fires only for status changes of tasks with dependants, in the
 * transaction that ends the parent; _wake_dispatchers() below is its way
 * to the commit wake-up enqueue uses.
 *
 * enqueue.c calls two functions: taskq_deps_resolve() while it checks
 * the options (before anything is written), and taskq_deps_link() once
 * the new row's id is known.  The parents are locked in the first, so
 * that no parent can end between the check of its status and our commit
 * without seeing our rows in taskq.task_deps.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(taskq_current_task);
PG_FUNCTION_INFO_V1(taskq_wake_released);

/* The id of the task whose handler runs in this backend; 0 when none. */
int64		taskq_running_task = 0;

/* enqueue()'s arguments up to metadata, which every version has. */
#define ENQUEUE_BASE_NARGS	12

static SPIPlanPtr lock_plan = NULL;
static SPIPlanPtr mark_plan = NULL;
static SPIPlanPtr link_plan = NULL;
static SPIPlanPtr explain_plan = NULL;

/*
 * Which argument of this enqueue()/enqueue_many() is after: the last one,
 * when it is a bigint[] beyond metadata (DESIGN lists after last, so
 * options added before it, such as group_key, move it without a change
 * here); -1 for 0.1's functions, which have none.  Looked up once per
 * function.
 */
static int
after_argno(FunctionCallInfo fcinfo)
{
	static Oid	cached_fn = InvalidOid;
	static int	cached_argno = -1;
	HeapTuple	tup;
	Form_pg_proc proc;

	if (fcinfo->flinfo == NULL || !OidIsValid(fcinfo->flinfo->fn_oid))
		return -1;
	if (fcinfo->flinfo->fn_oid == cached_fn)
		return cached_argno;
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fcinfo->flinfo->fn_oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fcinfo->flinfo->fn_oid);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	cached_argno = -1;
	if (proc->pronargs > ENQUEUE_BASE_NARGS &&
		proc->proargtypes.values[proc->pronargs - 1] == INT8ARRAYOID)
		cached_argno = proc->pronargs - 1;
	ReleaseSysCache(tup);
	cached_fn = fcinfo->flinfo->fn_oid;
	return cached_argno;
}

/*
 * The ids of after, checked: one dimension, no NULL element.  Duplicates
 * are kept here (the caller's order matters for messages) and count once.
 */
static ArrayType *
after_ids(FunctionCallInfo fcinfo, int argno, int64 **ids, int *n)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(argno);
	Datum	   *elems;
	bool	   *nulls;
	int			i;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("after must be a one-dimensional array"),
				 errhint("Pass ARRAY[id, ...], the ids of the tasks to wait for.")));
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, n);
	*ids = palloc(sizeof(int64) * Max(*n, 1));
	for (i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("after[%d] is NULL", i + 1),
					 errhint("Pass the ids that taskq.enqueue() returned, or leave after NULL.")));
		(*ids)[i] = DatumGetInt64(elems[i]);
	}
	return arr;
}

/* The status of one of the rows the lock statement returned, or NULL. */
static const char *
locked_status(int64 id)
{
	uint64		i;
	bool		isnull;

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];

		if (DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull)) == id)
			return TextDatumGetCString(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
	}
	return NULL;
}

/*
 * Check one parent, in the caller's order: unknown and invisible ids get
 * the same answer as everywhere else (tasks.c); a parent that ended
 * without completing can never be waited for.  True when it is live.
 */
static bool
check_parent(int64 id, bool sync)
{
	const char *status = locked_status(id);

	if (status == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("task " INT64_FORMAT " does not exist", id),
				 errdetail("It is listed in after."),
				 errhint("A role sees only its own tasks; ended tasks are removed after taskq.retention.")));
	if (strcmp(status, "completed") == 0)
		return false;
	if (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0 ||
		strcmp(status, "timeout") == 0 || strcmp(status, "expired") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("task " INT64_FORMAT " ended %s and will never complete", id, status),
				 errdetail("It is listed in after."),
				 errhint("Retry it with taskq.retry(" INT64_FORMAT ") first, or leave it out of after.", id)));
	if (sync)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot run a task in sync mode before task " INT64_FORMAT " completes; it is %s", id, status),
				 errhint("Enqueue it with mode => 'async' to wait for its parents.")));
	return true;
}

/*
 * Resolve enqueue's after option for the role caller: lock the listed
 * tasks that the caller may see (in id order, so that concurrent enqueues
 * cannot deadlock), check each, and keep the live ones, each once, in
 * deps.  The live parents are marked has_dependants now, still before
 * the new task is written (the mark rolls back with the enqueue; a mark
 * whose dependants were all cancelled stays, and costs one call of the
 * trigger when the parent ends).  Runs as the owner of taskq.tasks,
 * inside the caller's SPI connection.
 */
void
taskq_deps_resolve(FunctionCallInfo fcinfo, Oid caller, bool sync, TaskqDeps *deps)
{
	int			argno = after_argno(fcinfo);
	int64	   *ids;
	int			n,
				i,
				j;
	Oid			types[2] = {INT8ARRAYOID, OIDOID};
	Datum		values[2];
	TaskqAsOwner save;

	deps->given = false;
	deps->n = 0;
	deps->parents = NULL;
	if (argno < 0 || PG_ARGISNULL(argno))
		return;
	values[0] = PointerGetDatum(after_ids(fcinfo, argno, &ids, &n));
	values[1] = ObjectIdGetDatum(caller);
	if (n == 0)
		return;
	deps->given = true;

	taskq_become_owner(&save);
	if (SPI_execute_plan(taskq_prepare(&lock_plan,
									   "SELECT t.id, t.status::pg_catalog.text FROM taskq.tasks t"
									   " WHERE t.id OPERATOR(pg_catalog.=) ANY ($1)"
									   " AND pg_catalog.pg_has_role($2, t.owner::pg_catalog.oid, 'USAGE')"
									   " ORDER BY t.id FOR NO KEY UPDATE OF t",
									   2, types),
						 values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not lock the tasks listed in after");
	deps->parents = palloc(sizeof(int64) * n);
	for (i = 0; i < n; i++)
	{
		bool		seen = false;

		for (j = 0; j < deps->n && !seen; j++)
			seen = deps->parents[j] == ids[i];
		if (!seen && check_parent(ids[i], sync))
			deps->parents[deps->n++] = ids[i];
	}
	SPI_freetuptable(SPI_tuptable);
	if (deps->n > 0)
	{
		Oid			mtypes[1] = {INT8ARRAYOID};
		Datum		mvalues[1];

		mvalues[0] = PointerGetDatum(construct_array((Datum *) deps->parents, deps->n, INT8OID,
													 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		if (SPI_execute_plan(taskq_prepare(&mark_plan,
										   "UPDATE taskq.tasks SET has_dependants = true"
										   " WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND NOT has_dependants",
										   1, mtypes),
							 mvalues, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "taskq: could not mark the tasks listed in after");
	}
	taskq_restore_user(&save);
}

/* The status a task enqueued with these dependencies starts in. */
const char *
taskq_deps_status(const TaskqDeps *deps)
{
	return deps->n > 0 ? "waiting" : "queued";
}

/*
 * Record that the new task child waits on every live parent of deps.
 * Runs as the owner of taskq.tasks, inside the caller's SPI connection.
 */
void
taskq_deps_link(const TaskqDeps *deps, int64 child)
{
	Oid			types[2] = {INT8ARRAYOID, INT8OID};
	Datum		values[2];
	TaskqAsOwner save;

	if (deps->n == 0)
		return;
	values[0] = PointerGetDatum(construct_array((Datum *) deps->parents, deps->n, INT8OID,
												8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = Int64GetDatum(child);
	taskq_become_owner(&save);
	if (SPI_execute_plan(taskq_prepare(&link_plan,
									   "INSERT INTO taskq.task_deps (parent, child)"
									   " SELECT p, $2 FROM pg_catalog.unnest($1) AS p",
									   2, types),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "taskq: could not record the dependencies of task " INT64_FORMAT, child);
	taskq_restore_user(&save);
}

/*
 * For taskq.explain(): "waiting on tasks N, M" (or "task N") when the
 * task waits on others, else NULL.  The caller has checked that the task
 * is the caller's to see; the parents are named by id only.  Needs an SPI
 * connection; runs as the owner of taskq.tasks.
 */
char *
taskq_deps_explain(int64 id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	TaskqAsOwner save;
	char	   *msg = NULL;

	taskq_become_owner(&save);
	if (SPI_execute_plan(taskq_prepare(&explain_plan,
									   "SELECT pg_catalog.count(*), pg_catalog.string_agg(d.parent::pg_catalog.text, ', ' ORDER BY d.parent)"
									   " FROM taskq.task_deps d WHERE d.child OPERATOR(pg_catalog.=) $1",
									   1, types),
						 values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.task_deps");
	if (SPI_processed == 1)
	{
		bool		isnull;
		int64		count = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		Datum		list = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

		if (count > 0)
			msg = psprintf("waiting on %s %s", count == 1 ? "task" : "tasks",
							TextDatumGetCString(list));
	}
	taskq_restore_user(&save);
	return msg;
}

/*
 * taskq.current_task(): the task whose handler is running in this
 * backend, so that a handler can enqueue work after itself or read its
 * parents' results; NULL outside a handler.
 */
Datum
taskq_current_task(PG_FUNCTION_ARGS)
{
	if (taskq_running_task == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(taskq_running_task);
}

/*
 * taskq._wake_dispatchers(n): the release trigger's way to the commit
 * wake-up that enqueue() uses, so released tasks start without a poll.
 */
Datum
taskq_wake_released(PG_FUNCTION_ARGS)
{
	int32		n = PG_GETARG_INT32(0);

	if (n > 0)
		taskq_request_wakeup_at_commit(n);
	PG_RETURN_VOID();
}
