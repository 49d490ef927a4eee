/*-------------------------------------------------------------------------
 *
 * external.c
 *	  External workers: handlers of kind 'external' whose tasks workers
 *	  outside the database pull with taskq.claim(), keep with
 *	  taskq.heartbeat() and end with ack(), ack_many() or nack() (tasks.c).
 *
 * A claim is the dispatchers' claim statement (outbox.c), asked to mark
 * the tasks 'dispatched' with a lease and the attempt charged instead of
 * 'running': one statement, so that whatever a claim honours (paused
 * queues, dispatch order, limits) holds for both.  It runs in the
 * caller's transaction, as the owner of taskq.tasks.
 *
 * Who may claim: roles with the privileges of the role that registered
 * the handler (pg_has_role(..., 'USAGE'), as for ack and nack).
 *
 * Waiting holds nothing: an idle worker LISTENs on wake_channel(queue).
 * Dispatchers, after a claim that came back short (so the due tasks left
 * are other dispatchers', external ones, or held back), notify the
 * channels of the queues whose external tasks are due, in their own
 * transaction: the application's commits never take the NOTIFY lock.
 * That covers an enqueuing commit (which wakes the dispatchers through
 * shared memory), a run_at reached (a dispatcher sleeps until then) and
 * a lease run out (maintenance requeues it, then the dispatcher claims).
 *
 * A session lease records the claiming backend's pid in worker_pid and
 * the claim's time in started_at; maintenance returns the tasks of
 * sessions that have ended.
 *
 * It calls common.c, outbox.c (the claim's text) and monitor.c (SRF
 * plumbing).
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "catalog/pg_type.h"
#include "commands/async.h"
#include "common/md5.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(taskq_claim);
PG_FUNCTION_INFO_V1(taskq_heartbeat);
PG_FUNCTION_INFO_V1(taskq_wake_channel);

#define CLAIM_MAX_TASKS		10000
#define WAKE_SCAN_TASKS		1000	/* due tasks a wake-up looks at, at most */
#define CHANNEL_PREFIX		"taskq_wake_"

static SPIPlanPtr claimable_plan = NULL;
static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr limited_pick_plan = NULL;
static SPIPlanPtr limited_mark_plan = NULL;
static SPIPlanPtr heartbeat_plan = NULL;
static SPIPlanPtr wake_plan = NULL;
static SPIPlanPtr sessions_plan = NULL;

/* ----------------------------------------------------------------
 * Arguments
 * ----------------------------------------------------------------
 */

/* A name argument that must be given, checked as names are elsewhere. */
static char *
name_arg(FunctionCallInfo fcinfo, int n, const char *what, const char *hint)
{
	char	   *value;

	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", what),
				 errhint("%s", hint)));
	value = text_to_cstring(PG_GETARG_TEXT_PP(n));
	taskq_check_name(what, value);
	return value;
}

/*
 * A lease argument in milliseconds: NULL means taskq.ack_timeout; zero
 * and negative ones are refused, as is one past what a lease may be.
 */
static int64
lease_arg(FunctionCallInfo fcinfo, int n)
{
	int64		ms;

	if (PG_ARGISNULL(n))
		return taskq_ack_timeout;
	ms = taskq_interval_ms("lease", PG_GETARG_INTERVAL_P(n), false);
	if (ms > INT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease is out of range: %s",
						DatumGetCString(DirectFunctionCall1(interval_out, PG_GETARG_DATUM(n)))),
				 errhint("Use a lease of at most 24 days; heartbeat() extends it.")));
	return ms;
}

/* ----------------------------------------------------------------
 * Claim
 * ----------------------------------------------------------------
 */

/*
 * Refuse a claim naming a handler that the caller may not claim from:
 * unknown, not external, or registered by a role whose privileges the
 * caller lacks.  Runs as the table owner.
 */
static void
check_named_handler(const char *name, Oid caller)
{
	TaskqHandler h;

	if (!taskq_lookup_handler(name, &h))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("handler \"%s\" does not exist", name),
				 errhint("Register it with taskq.register_handler(name, NULL, kind => 'external').")));
	if (h.kind != TASKQ_KIND_EXTERNAL)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("handler \"%s\" is not an external handler", name),
				 errdetail("Its kind is \"%s\"; dispatchers run its tasks.", taskq_kind_name(h.kind)),
				 errhint("Only tasks of handlers of kind 'external' can be claimed.")));
	if (!has_privs_of_role(caller, h.owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to claim tasks of handler \"%s\"", name),
				 errdetail("The handler was registered by role \"%s\".",
						   GetUserNameFromId(h.owner, true) ? GetUserNameFromId(h.owner, true) : "?"),
				 errhint("Grant that role to the worker's role.")));
}

/*
 * The enabled external handlers whose tasks the caller may claim (only
 * the named one, if one is), as a text[] datum in the SPI result; NULL
 * when the queue is paused.
 */
static Datum
claimable_handlers(Oid caller, const char *handler, const char *queue, bool *limited)
{
	Oid			types[3] = {OIDOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	bool		isnull;
	HeapTuple	tup;
	TupleDesc	desc;

	values[0] = ObjectIdGetDatum(caller);
	values[1] = handler ? CStringGetTextDatum(handler) : (Datum) 0;
	nulls[1] = handler ? ' ' : 'n';
	values[2] = CStringGetTextDatum(queue);
	if (SPI_execute_plan(taskq_prepare(&claimable_plan,
									   "SELECT ARRAY(SELECT name FROM taskq.handlers"
									   "  WHERE kind OPERATOR(pg_catalog.=) 'external' AND enabled"
									   "    AND pg_catalog.pg_has_role($1, owner::pg_catalog.oid, 'USAGE')"
									   "    AND ($2 IS NULL OR name OPERATOR(pg_catalog.=) $2)) AS handlers,"
									   " EXISTS (SELECT FROM taskq.queues WHERE name OPERATOR(pg_catalog.=) $3"
									   "   AND paused) AS paused,"
									   " EXISTS (SELECT FROM taskq.queues WHERE name OPERATOR(pg_catalog.=) $3"
									   "   AND " TASKQ_QUEUE_LIMITED_SQL ") AS limited",
									   3, types),
						 values, nulls, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: reading the claimable handlers failed");
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	*limited = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
	if (DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull)))
		return (Datum) 0;
	return SPI_getbinval(tup, desc, 1, &isnull);
}

/*
 * A limited queue's claim: taskq._claim_queue() picks the tasks under the
 * queue's limits, group fairness and aging, exactly as for a dispatcher
 * (it locks the queue's row first, so the counts are exact across
 * dispatchers and workers), with every handler but the claimable ones
 * skipped; then those it set 'running' become 'dispatched' with the
 * lease, their attempt charged, as the plain claim marks them.  Two
 * statements: the function's UPDATE is not visible to a statement around
 * it.  Leaves the claimed rows in SPI_tuptable, as the plain claim does.
 */
static void
claim_limited(const char *queue, Datum handlers, int max_tasks, int64 lease_ms, bool session)
{
	Oid			pick_types[4] = {TEXTOID, INT4OID, INT4OID, TEXTARRAYOID};
	Datum		pick[4] = {CStringGetTextDatum(queue), Int32GetDatum(max_tasks),
	Int32GetDatum(MyProcPid), handlers};
	Oid			mark_types[3] = {INT4OID, INT8ARRAYOID, INT8OID};
	Datum		mark[3];
	char		mark_nulls[3] = {session ? ' ' : 'n', ' ', ' '};
	bool		isnull;

	if (SPI_execute_plan(taskq_prepare(&limited_pick_plan,
									   "SELECT pg_catalog.array_agg(c.id) FROM taskq._claim_queue($1, $2, 1, $3,"
									   "   ARRAY(SELECT name FROM taskq.handlers"
									   "          WHERE name OPERATOR(pg_catalog.<>) ALL ($4)), true) c"
									   " WHERE NOT c.expired",
									   4, pick_types),
						 pick, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "taskq: claiming tasks of a limited queue failed");
	mark[0] = Int32GetDatum(MyProcPid);
	mark[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	mark[2] = Int64GetDatum(lease_ms);
	if (isnull)
		mark[1] = PointerGetDatum(construct_empty_array(INT8OID));
	if (SPI_execute_plan(taskq_prepare(&limited_mark_plan,
									   "UPDATE taskq.tasks t SET status = 'dispatched', worker_pid = $1,"
									   "  attempts = t.attempts OPERATOR(pg_catalog.+) 1,"
									   "  lease_until = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+)"
									   "    pg_catalog.make_interval(secs => $3 OPERATOR(pg_catalog./) 1000.0)"
									   " WHERE t.id OPERATOR(pg_catalog.=) ANY ($2)"
									   "   AND t.status OPERATOR(pg_catalog.=) 'running'"
									   " RETURNING t.id, t.handler, t.queue, t.priority, t.run_at, t.payload,"
									   "  t.metadata, t.attempts, t.lease_until, false AS expired",
									   3, mark_types),
						 mark, mark_nulls, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "taskq: claiming tasks of a limited queue failed");
}

/*
 * The claim statement for external workers: the dispatchers' claim (see
 * outbox.c) for this queue and these handlers, up to $4 tasks, each
 * 'dispatched' with a lease of $5 ms and its attempt charged at once, so
 * that a lease that runs out, a nack and an ack treat it as they treat a
 * notify task's.  $1 is the claiming backend's pid for a session lease,
 * else NULL.  Planned for each call's values: LIMIT is a parameter.
 */
static SPIPlanPtr
external_claim_plan(void)
{
	Oid			types[5] = {INT4OID, TEXTOID, TEXTARRAYOID, INT4OID, INT8OID};

	if (claim_plan != NULL)
		return claim_plan;
	return taskq_prepare_custom(&claim_plan,
								taskq_outbox_claim_sql("   AND t.queue OPERATOR(pg_catalog.=) $2"
													   "   AND t.handler OPERATOR(pg_catalog.=) ANY ($3)",
													   "$4", "'dispatched'",
													   ", attempts = t.attempts OPERATOR(pg_catalog.+)"
													   "    CASE WHEN t.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now() THEN 0 ELSE 1 END,"
													   "  lease_until = CASE WHEN t.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now() THEN NULL"
													   "    ELSE pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+)"
													   "      pg_catalog.make_interval(secs => $5 OPERATOR(pg_catalog./) 1000.0) END"),
								5, types);
}

/* A claimed task, as claim() returns it. */
typedef struct ClaimedTask
{
	int64		id;
	int			priority;
	TimestampTz run_at;
	HeapTuple	row;			/* id, handler, queue, payload, metadata, attempt, lease_until */
} ClaimedTask;

/* Dispatch order: priority DESC, run_at, id. */
static int
compare_claimed(const void *a, const void *b)
{
	const ClaimedTask *x = a;
	const ClaimedTask *y = b;

	if (x->priority != y->priority)
		return x->priority > y->priority ? -1 : 1;
	if (x->run_at != y->run_at)
		return x->run_at < y->run_at ? -1 : 1;
	return x->id < y->id ? -1 : (x->id > y->id ? 1 : 0);
}

/*
 * The claim's result rows, less those it only marked expired, in dispatch
 * order into store.  The tuples are formed in the caller's context.
 */
static void
store_claimed(Tuplestorestate *store, TupleDesc desc, MemoryContext cxt)
{
	static const char *const names[7] = {"id", "handler", "queue", "payload", "metadata",
	"attempts", "lease_until"};
	TupleDesc	res = SPI_tuptable->tupdesc;
	int			cols[7];
	int			c_expired = SPI_fnumber(res, "expired");
	int			c_priority = SPI_fnumber(res, "priority");
	int			c_run_at = SPI_fnumber(res, "run_at");
	ClaimedTask *tasks;
	int			n = 0;
	int			i, j;
	MemoryContext old = MemoryContextSwitchTo(cxt);

	for (j = 0; j < 7; j++)
		if ((cols[j] = SPI_fnumber(res, names[j])) <= 0)
			elog(ERROR, "taskq: claim result column \"%s\" is missing", names[j]);
	tasks = palloc(sizeof(ClaimedTask) * Max(SPI_processed, 1));
	for (i = 0; i < (int) SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		Datum		values[7];
		bool		nulls[7];
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(tup, res, c_expired, &isnull)))
			continue;
		for (j = 0; j < 7; j++)
			values[j] = SPI_getbinval(tup, res, cols[j], &nulls[j]);
		tasks[n].id = DatumGetInt64(values[0]);
		tasks[n].priority = DatumGetInt32(SPI_getbinval(tup, res, c_priority, &isnull));
		tasks[n].run_at = DatumGetTimestampTz(SPI_getbinval(tup, res, c_run_at, &isnull));
		tasks[n].row = heap_form_tuple(desc, values, nulls);
		n++;
	}
	qsort(tasks, n, sizeof(ClaimedTask), compare_claimed);
	for (i = 0; i < n; i++)
		tuplestore_puttuple(store, tasks[i].row);
	MemoryContextSwitchTo(old);
}

/*
 * taskq.claim(queue, max_tasks, lease, handler, session_lease): see the
 * file header.  Checks every argument before anything is read.
 */
Datum
taskq_claim(PG_FUNCTION_ARGS)
{
	Oid			caller = taskq_caller();
	char	   *queue = name_arg(fcinfo, 0, "queue", "Pass the queue to claim from, as the tasks were enqueued.");
	int			max_tasks;
	int64		lease_ms = lease_arg(fcinfo, 2);
	char	   *handler = NULL;
	bool		session;
	Tuplestorestate *store;
	TupleDesc	desc;
	TaskqAsOwner save;
	Datum		handlers;
	bool		limited;
	MemoryContext cxt = CurrentMemoryContext;

	if (PG_ARGISNULL(1) || PG_GETARG_INT32(1) < 1 || PG_GETARG_INT32(1) > CLAIM_MAX_TASKS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 PG_ARGISNULL(1) ? errmsg("max_tasks must not be NULL") :
				 errmsg("max_tasks %d is out of range", PG_GETARG_INT32(1)),
				 errhint("Claim from 1 to %d tasks at a time.", CLAIM_MAX_TASKS)));
	max_tasks = PG_GETARG_INT32(1);
	if (!PG_ARGISNULL(3))
		handler = name_arg(fcinfo, 3, "handler", "Pass NULL for every external handler you may claim.");
	if (PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("session_lease must not be NULL"),
				 errhint("Use false (the lease alone decides) or true (it also ends with this session).")));
	session = PG_GETARG_BOOL(4);

	taskq_materialize(fcinfo, &store, &desc);
	SPI_connect();
	taskq_become_owner(&save);
	if (handler != NULL)
		check_named_handler(handler, caller);
	handlers = claimable_handlers(caller, handler, queue, &limited);
	if (handlers == (Datum) 0 || ArrayGetNItems(ARR_NDIM(DatumGetArrayTypeP(handlers)),
												ARR_DIMS(DatumGetArrayTypeP(handlers))) == 0)
		;						/* paused, or nothing the caller may claim */
	else if (limited)
	{
		claim_limited(queue, handlers, max_tasks, lease_ms, session);
		store_claimed(store, desc, cxt);
	}
	else
	{
		Datum		values[5];
		char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

		values[0] = Int32GetDatum(MyProcPid);
		nulls[0] = session ? ' ' : 'n';
		values[1] = CStringGetTextDatum(queue);
		values[2] = handlers;
		values[3] = Int32GetDatum(max_tasks);
		values[4] = Int64GetDatum(lease_ms);
		if (SPI_execute_plan(external_claim_plan(), values, nulls, false, 0) != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "taskq: claiming tasks failed");
		store_claimed(store, desc, cxt);
	}
	taskq_restore_user(&save);
	SPI_finish();
	return (Datum) 0;
}

/* ----------------------------------------------------------------
 * Heartbeat
 * ----------------------------------------------------------------
 */

static int
compare_ids(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/* ids as heartbeat() and ack_many() take them: 1-D, no NULLs. */
static ArrayType *
ids_arg(FunctionCallInfo fcinfo)
{
	ArrayType  *ids;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("task ids must not be NULL"),
				 errhint("Pass an array of the ids that taskq.claim() returned.")));
	ids = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(ids) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("task ids must be a one-dimensional array"),
				 errhint("Pass ARRAY[id, ...], the ids that taskq.claim() returned.")));
	if (array_contains_nulls(ids))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("task ids must not contain NULL"),
				 errhint("Pass an array of the ids that taskq.claim() returned.")));
	return ids;
}

/*
 * taskq.heartbeat(ids, lease): extend to now + lease the leases that are
 * still live of the listed external tasks the caller may claim, and
 * return their ids in order.  Any other id (unknown, another role's,
 * ended, lapsed) is left out, not an error: a worker learns which tasks
 * it lost, whatever the reason, in one call.
 */
Datum
taskq_heartbeat(PG_FUNCTION_ARGS)
{
	ArrayType  *ids = ids_arg(fcinfo);
	int64		lease_ms = lease_arg(fcinfo, 1);
	Oid			caller = taskq_caller();
	Oid			types[3] = {INT8ARRAYOID, INT8OID, OIDOID};
	Datum		values[3];
	Tuplestorestate *store;
	TupleDesc	desc;
	TaskqAsOwner save;
	int64	   *held;
	int			n;
	int			i;
	MemoryContext cxt = CurrentMemoryContext;

	taskq_materialize(fcinfo, &store, &desc);
	values[0] = PointerGetDatum(ids);
	values[1] = Int64GetDatum(lease_ms);
	values[2] = ObjectIdGetDatum(caller);
	SPI_connect();
	taskq_become_owner(&save);
	if (SPI_execute_plan(taskq_prepare(&heartbeat_plan,
									   "UPDATE taskq.tasks t SET lease_until = pg_catalog.clock_timestamp()"
									   "   OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $2 OPERATOR(pg_catalog./) 1000.0)"
									   " FROM taskq.handlers h"
									   " WHERE t.id OPERATOR(pg_catalog.=) ANY ($1)"
									   "   AND t.status OPERATOR(pg_catalog.=) 'dispatched'"
									   "   AND t.lease_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()"
									   "   AND h.name OPERATOR(pg_catalog.=) t.handler"
									   "   AND h.kind OPERATOR(pg_catalog.=) 'external'"
									   "   AND pg_catalog.pg_has_role($3, h.owner::pg_catalog.oid, 'USAGE')"
									   " RETURNING t.id",
									   3, types),
						 values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "taskq: extending leases failed");
	n = (int) SPI_processed;
	held = MemoryContextAlloc(cxt, sizeof(int64) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		held[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	taskq_restore_user(&save);
	SPI_finish();

	qsort(held, n, sizeof(int64), compare_ids);
	for (i = 0; i < n; i++)
	{
		Datum		v = Int64GetDatum(held[i]);
		bool		isnull = false;

		tuplestore_putvalues(store, desc, &v, &isnull);
	}
	return (Datum) 0;
}

/* ----------------------------------------------------------------
 * Wake channels
 * ----------------------------------------------------------------
 */

/*
 * The channel of a queue: "taskq_wake_" and the queue's name, which fits
 * a channel name (63 bytes) for queues of up to 52 bytes; a longer name
 * is cut at a character boundary and followed by part of its md5, so
 * that two long names do not share a channel by accident.  Palloc'd.
 */
static char *
channel_of(const char *queue)
{
	int			len = strlen(queue);
	char		md5[33];
	const char *errstr = NULL;
	int			keep;

	if (len <= NAMEDATALEN - 1 - (int) strlen(CHANNEL_PREFIX))
		return psprintf(CHANNEL_PREFIX "%s", queue);
	if (!pg_md5_hash(queue, len, md5, &errstr))
		elog(ERROR, "taskq: could not hash queue name: %s", errstr);
	keep = pg_mbcliplen(queue, len, 36);
	return psprintf(CHANNEL_PREFIX "%.*s_%.15s", keep, queue, md5);
}

/* taskq.wake_channel(queue): the channel to LISTEN on for that queue. */
Datum
taskq_wake_channel(PG_FUNCTION_ARGS)
{
	char	   *queue = name_arg(fcinfo, 0, "queue", "Pass the queue whose workers will LISTEN.");

	PG_RETURN_TEXT_P(cstring_to_text(channel_of(queue)));
}

/*
 * Notify the wake channels of the queues whose external tasks are due
 * (a dispatcher calls this in its claim's transaction, after a short
 * claim, so the notifications go out when it commits).  The queues with
 * queued external tasks are found by a skip scan of tasks_external_idx,
 * one descent per queue; in each, the first WAKE_SCAN_TASKS tasks in
 * index order (group by group, each in dispatch order) are looked at
 * for a due one of an enabled handler, so a
 * queue of tasks scheduled later costs a bounded read (a miss behind
 * them is what workers' own polling covers).  Nothing is read when no
 * external task is queued.  NOTIFY folds repeats within the transaction.
 */
void
taskq_external_wake_workers(void)
{
	uint64		i;

	if (SPI_execute_plan(taskq_prepare(&wake_plan,
									   psprintf("WITH RECURSIVE q(queue) AS ("
												"  (SELECT t.queue FROM taskq.tasks t"
												"    WHERE t.status OPERATOR(pg_catalog.=) 'queued' AND t.external"
												"    ORDER BY t.queue LIMIT 1)"
												"  UNION ALL"
												"  SELECT (SELECT t.queue FROM taskq.tasks t"
												"           WHERE t.status OPERATOR(pg_catalog.=) 'queued' AND t.external"
												"             AND t.queue OPERATOR(pg_catalog.>) q.queue ORDER BY t.queue LIMIT 1)"
												"  FROM q WHERE q.queue IS NOT NULL)"
												" SELECT q.queue FROM q WHERE q.queue IS NOT NULL"
												"  AND NOT EXISTS (SELECT FROM taskq.queues p"
												"   WHERE p.name OPERATOR(pg_catalog.=) q.queue AND p.paused)"
												"  AND EXISTS (SELECT FROM (SELECT t.handler, t.run_at FROM taskq.tasks t"
												"     WHERE t.queue OPERATOR(pg_catalog.=) q.queue"
												"       AND t.status OPERATOR(pg_catalog.=) 'queued' AND t.external"
												"     ORDER BY " TASKQ_SQL_UNGROUPED_ORDER " LIMIT %d) s"
												"   JOIN taskq.handlers h ON h.name OPERATOR(pg_catalog.=) s.handler"
												"    AND h.kind OPERATOR(pg_catalog.=) 'external' AND h.enabled"
												"   WHERE s.run_at OPERATOR(pg_catalog.<=) pg_catalog.now())",
												WAKE_SCAN_TASKS),
									   0, NULL),
						 NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "taskq: finding queues to wake failed");
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *queue = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		Async_Notify(channel_of(queue), "");
	}
}

/* ----------------------------------------------------------------
 * Session leases
 * ----------------------------------------------------------------
 */

/*
 * Return to the queue, as a new attempt (or failed, with none left), the
 * external tasks whose claiming session has ended: no backend has that
 * pid now, or the one that has started after the claim.  each is called
 * for every such task, as for leases that ran out.  Maintenance calls it.
 */
void
taskq_external_release_sessions(TaskqLeaseFn each)
{
	int			ret;
	uint64		i;

	ret = SPI_execute_plan(taskq_prepare(&sessions_plan,
										 "UPDATE taskq.tasks SET lease_until = NULL, worker_pid = NULL,"
										 " status = CASE WHEN attempts OPERATOR(pg_catalog.>=) max_attempts"
										 "   THEN 'failed' ELSE 'queued' END::taskq.status,"
										 " finished_at = CASE WHEN attempts OPERATOR(pg_catalog.>=) max_attempts"
										 "   THEN pg_catalog.clock_timestamp() END,"
										 " run_at = pg_catalog.clock_timestamp(),"
										 " last_error = 'the session that claimed this task ended (attempt '"
										 "   OPERATOR(pg_catalog.||) attempts::pg_catalog.text OPERATOR(pg_catalog.||) ')'"
										 " WHERE id OPERATOR(pg_catalog.=) ANY (SELECT t.id FROM taskq.tasks t"
										 "   WHERE t.status OPERATOR(pg_catalog.=) 'dispatched'"
										 "   AND t.worker_pid IS NOT NULL"
										 "   AND NOT EXISTS (SELECT FROM pg_catalog.pg_stat_get_activity(t.worker_pid) a"
										 "     WHERE a.backend_start OPERATOR(pg_catalog.<=) t.started_at)"
										 "   FOR UPDATE SKIP LOCKED)"
										 " RETURNING queue, handler, status OPERATOR(pg_catalog.=) 'failed' AS failed",
										 0, NULL),
						   NULL, NULL, false, 0);
	if (ret != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "taskq: releasing the tasks of ended sessions failed");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		each(SPI_getvalue(tup, desc, 1), SPI_getvalue(tup, desc, 2),
			 DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull)));
	}
}
