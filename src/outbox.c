/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The outbox's data layer: the statements on taskq.tasks (and the
 *	  claim's reads of taskq.queues and taskq.handlers), their kept plans,
 *	  and the decoding of their result rows into C values.
 *
 * Callers get C values, arrays and callbacks, never SPI tuples, and keep
 * the policy: which claim to run, the backoff, counters, logging.  Each
 * function runs inside the caller's transaction and SPI connection, under
 * the search_path the caller set for taskq's own statements (the
 * dispatcher's session-wide TASKQ_SAFE_SEARCH_PATH).  Rows are decoded by
 * column name, looked up once per result set.
 *
 * The statements are tuned: generic or custom plans on purpose, the batch
 * size written into the claim's SQL, the text comparison in STILL_OURS,
 * every operator qualified.  Read the comments before changing one.
 *
 * It calls common.c only.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr claim_excluding_plan = NULL;
static SPIPlanPtr exclusions_plan = NULL;
static SPIPlanPtr success_plan = NULL;
static SPIPlanPtr remove_plan = NULL;
static SPIPlanPtr failure_plan = NULL;
static SPIPlanPtr reap_plan = NULL;
static SPIPlanPtr backoff_plan = NULL;
static SPIPlanPtr lease_plan = NULL;
static SPIPlanPtr expire_plan = NULL;
static SPIPlanPtr retention_plan = NULL;
static SPIPlanPtr next_due_plan = NULL;

/* ----------------------------------------------------------------
 * Decoding
 * ----------------------------------------------------------------
 */

/*
 * The position of a result column, by name: a statement whose RETURNING
 * list changes fails here, loudly, instead of decoding the wrong column.
 */
static int
column(TupleDesc desc, const char *name)
{
	int			attno = SPI_fnumber(desc, name);

	if (attno <= 0)
		elog(ERROR, "taskq: result column \"%s\" is missing", name);
	return attno;
}

/* A column's value; a NULL one comes back as (Datum) 0 with *isnull set. */
static Datum
value_of(HeapTuple tup, TupleDesc desc, int attno, bool *isnull)
{
	return SPI_getbinval(tup, desc, attno, isnull);
}

/* A column that is never NULL in the statements that return it. */
static Datum
value_not_null(HeapTuple tup, TupleDesc desc, int attno)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, attno, &isnull);

	if (isnull)
		elog(ERROR, "taskq: result column \"%s\" is null", SPI_fname(desc, attno));
	return d;
}

/* The positions of a claimed task's columns, looked up once per result. */
typedef struct TaskColumns
{
	int			id;
	int			handler;
	int			queue;
	int			priority;
	int			attempts;
	int			max_attempts;
	int			timeout_ms;
	int			owner;
	int			run_at;
	int			payload;
	int			metadata;
	int			expired;
} TaskColumns;

static void
task_columns(TupleDesc desc, TaskColumns *c)
{
	c->id = column(desc, "id");
	c->handler = column(desc, "handler");
	c->queue = column(desc, "queue");
	c->priority = column(desc, "priority");
	c->attempts = column(desc, "attempts");
	c->max_attempts = column(desc, "max_attempts");
	c->timeout_ms = column(desc, "timeout_ms");
	c->owner = column(desc, "owner");
	c->run_at = column(desc, "run_at");
	c->payload = column(desc, "payload");
	c->metadata = column(desc, "metadata");
	c->expired = column(desc, "expired");
}

/*
 * One claimed task row into *t, its strings and jsonb copied into the
 * current memory context so that they outlive the SPI result.
 */
static void
decode_task(HeapTuple tup, TupleDesc desc, const TaskColumns *c, TaskqTask *t)
{
	bool		isnull;
	Datum		d;

	t->id = DatumGetInt64(value_not_null(tup, desc, c->id));
	t->handler = TextDatumGetCString(value_not_null(tup, desc, c->handler));
	t->queue = TextDatumGetCString(value_not_null(tup, desc, c->queue));
	t->priority = DatumGetInt32(value_not_null(tup, desc, c->priority));
	t->attempts = DatumGetInt32(value_not_null(tup, desc, c->attempts));
	t->max_attempts = DatumGetInt32(value_not_null(tup, desc, c->max_attempts));
	t->timeout_ms = DatumGetInt64(value_not_null(tup, desc, c->timeout_ms));
	t->owner = DatumGetObjectId(value_not_null(tup, desc, c->owner));
	t->run_at = DatumGetTimestampTz(value_not_null(tup, desc, c->run_at));
	t->payload = PointerGetDatum(PG_DETOAST_DATUM_COPY(value_not_null(tup, desc, c->payload)));
	d = value_of(tup, desc, c->metadata, &isnull);
	t->metadata = isnull ? (Datum) 0 : PointerGetDatum(PG_DETOAST_DATUM_COPY(d));
	t->expired = DatumGetBool(value_not_null(tup, desc, c->expired));
}

/* The elements of a one-dimensional array datum. */
static int
array_length_of(Datum array)
{
	ArrayType  *a = DatumGetArrayTypeP(array);

	return ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a));
}

/* ----------------------------------------------------------------
 * Claim
 * ----------------------------------------------------------------
 */

/*
 * The paused queues and disabled handlers, which the next claim skips.
 * The arrays stay in the SPI result, valid until the caller's next SPI
 * statement but one: taskq_outbox_claim() is that statement.
 */
void
taskq_outbox_read_exclusions(TaskqExclusions *ex)
{
	TupleDesc	desc;
	HeapTuple	tup;

	if (SPI_execute_plan(taskq_prepare(&exclusions_plan,
									   "SELECT ARRAY(SELECT name FROM taskq.queues WHERE paused) AS paused_queues,"
									   " ARRAY(SELECT name FROM taskq.handlers WHERE NOT enabled) AS disabled_handlers",
									   0, NULL),
						 NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: reading paused queues failed");
	desc = SPI_tuptable->tupdesc;
	tup = SPI_tuptable->vals[0];
	ex->queues = value_not_null(tup, desc, column(desc, "paused_queues"));
	ex->handlers = value_not_null(tup, desc, column(desc, "disabled_handlers"));
	ex->n = array_length_of(ex->queues) + array_length_of(ex->handlers);
}

/*
 * The claim, in three steps, one statement:
 *
 *	served		the queues this dispatcher's executor serves that have due
 *				work: its named queues, or (the default executor) every
 *				queue with a queued task that no other executor names, found
 *				by a skip scan of tasks_queue_idx (one descent per distinct
 *				queued queue, however long its backlog).  Paused queues drop
 *				out here, so their backlog costs nothing.
 *	candidates	for each served queue, its first due tasks in dispatch
 *				order (CLAIM_SQL_CANDIDATES: one queue's step, kept apart so
 *				that queue limits and group fairness can replace it), merged
 *				into the batch's top batch_size: how many each queue gives.
 *	lock		each queue's share, taken again in the same order with FOR
 *				UPDATE SKIP LOCKED, so concurrent dispatchers of one executor
 *				take different tasks and no more rows are locked than the
 *				batch uses.
 *
 * $1 is our pid; $2 the executor's queues (text[]; NULL for the default
 * executor), $3 the queues other executors serve (for the default one),
 * $4 the paused queues, $5 the disabled handlers.  The batch size is
 * written in (a LIMIT parameter would make the generic plan guess a tenth
 * of the table and hash-join it).
 */
#define CLAIM_SQL_SERVED \
	"WITH RECURSIVE queued(queue) AS (" \
	"  (SELECT t.queue FROM taskq.tasks t WHERE $2 IS NULL" \
	"     AND t.status OPERATOR(pg_catalog.=) 'queued' ORDER BY t.queue LIMIT 1)" \
	"  UNION ALL" \
	"  SELECT (SELECT t.queue FROM taskq.tasks t" \
	"          WHERE t.status OPERATOR(pg_catalog.=) 'queued'" \
	"            AND t.queue OPERATOR(pg_catalog.>) q.queue ORDER BY t.queue LIMIT 1)" \
	"  FROM queued q WHERE q.queue IS NOT NULL)," \
	" served(queue) AS (" \
	"  SELECT s.queue FROM (SELECT x.queue FROM pg_catalog.unnest($2::pg_catalog.text[]) AS x(queue)" \
	"                      UNION ALL" \
	"                      SELECT q.queue FROM queued q WHERE q.queue IS NOT NULL" \
	"                        AND q.queue OPERATOR(pg_catalog.<>) ALL ($3)) s" \
	"  WHERE s.queue OPERATOR(pg_catalog.<>) ALL ($4)),"

/*
 * One queue's candidates: its first due tasks in dispatch order, of
 * enabled handlers, read from tasks_queue_idx.  The first %s is the
 * queue's expression, the second the handler filter (HANDLER_FILTER or
 * nothing), %d the batch size.
 */
#define CLAIM_SQL_CANDIDATES \
	"SELECT t.id, t.priority, t.run_at FROM taskq.tasks t" \
	" WHERE t.queue OPERATOR(pg_catalog.=) %s" \
	"   AND t.status OPERATOR(pg_catalog.=) 'queued'" \
	"   AND t.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()%s" \
	" ORDER BY t.priority DESC, t.run_at, t.id LIMIT %d"

#define HANDLER_FILTER " AND t.handler OPERATOR(pg_catalog.<>) ALL ($5)"

#define CLAIM_SQL_MERGE \
	" candidates AS (" \
	"  SELECT s.queue, c.priority, c.run_at, c.id FROM served s," \
	"   LATERAL (" CLAIM_SQL_CANDIDATES ") c" \
	"  ORDER BY c.priority DESC, c.run_at, c.id LIMIT %d)," \
	" shares AS (SELECT queue, pg_catalog.count(*) AS n FROM candidates GROUP BY queue)," \
	" locked AS (" \
	"  SELECT l.id FROM shares s, LATERAL (" \
	"   SELECT t.id FROM taskq.tasks t" \
	"   WHERE t.queue OPERATOR(pg_catalog.=) s.queue" \
	"     AND t.status OPERATOR(pg_catalog.=) 'queued'" \
	"     AND t.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()%s" \
	"   ORDER BY t.priority DESC, t.run_at, t.id LIMIT s.n" \
	"   FOR UPDATE OF t SKIP LOCKED) l)"

#define CLAIM_SQL_UPDATE \
	" UPDATE taskq.tasks t SET" \
	"  status = CASE WHEN t.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()" \
	"    THEN 'expired' ELSE 'running' END::taskq.status," \
	"  worker_pid = $1, started_at = pg_catalog.now()," \
	"  finished_at = CASE WHEN t.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()" \
	"    THEN pg_catalog.now() END" \
	" FROM locked c WHERE t.id OPERATOR(pg_catalog.=) c.id" \
	" RETURNING t.id, t.handler, t.queue, t.priority, t.attempts, t.max_attempts," \
	"  pg_catalog.ceil(pg_catalog.date_part('epoch', t.timeout) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8 AS timeout_ms," \
	"  t.owner::pg_catalog.oid AS owner, t.run_at, t.payload, t.metadata," \
	"  t.status OPERATOR(pg_catalog.=) 'expired' AS expired"

/*
 * Without disabled handlers the claim runs with a generic plan (every
 * step has one right plan: the queue-led index, by equality on queue),
 * planned again when the batch size changes and at each maintenance, so
 * that a plan made while the table was small does not outlive its growth
 * until the next ANALYZE.  With some, the handler filter is planned for
 * its values each time: a generic plan estimates "handler <> ALL
 * (unknown)" from the column's statistics, and with one handler in the
 * table that is zero rows, which makes a bitmap scan and a sort of the
 * queue's whole backlog look cheaper than reading its first tasks.
 */
static int	claim_plans_batch = 0;

static SPIPlanPtr
claim_statement(int batch_size, bool excluding)
{
	Oid			types[5] = {INT4OID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	const char *filter = excluding ? HANDLER_FILTER : "";
	SPIPlanPtr *cache = excluding ? &claim_excluding_plan : &claim_plan;
	char	   *sql;

	if (*cache != NULL)
		return *cache;
	sql = psprintf(CLAIM_SQL_SERVED CLAIM_SQL_MERGE CLAIM_SQL_UPDATE,
				   "s.queue", filter, batch_size, batch_size, filter);
	return excluding ? taskq_prepare_custom(cache, sql, 5, types) :
		taskq_prepare_generic(cache, sql, 5, types);
}

/*
 * Drop the claim plans, to be planned again at their next use: see
 * claim_plans_batch.
 */
void
taskq_outbox_forget_claim_plans(void)
{
	if (claim_plan != NULL)
		SPI_freeplan(claim_plan);
	claim_plan = NULL;
	if (claim_excluding_plan != NULL)
		SPI_freeplan(claim_excluding_plan);
	claim_excluding_plan = NULL;
}

/* An empty text[], for an executor that excludes nothing. */
static Datum
empty_text_array(void)
{
	return PointerGetDatum(construct_empty_array(TEXTOID));
}

/*
 * Claim up to served->batch_size due tasks of the queues *served names for
 * this backend, skipping ex's paused queues and disabled handlers, and
 * mark them 'running', or 'expired' when past expires_at.  The tasks go
 * into *tasks, allocated in cxt, in the order the statement returned
 * them; returns how many.
 */
int
taskq_outbox_claim(const TaskqServed *served, const TaskqExclusions *ex,
				   MemoryContext cxt, TaskqTask **tasks)
{
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	TaskColumns cols;
	MemoryContext old;
	uint64		i;
	int			n;

	if (claim_plans_batch != served->batch_size)
		taskq_outbox_forget_claim_plans();
	claim_plans_batch = served->batch_size;
	values[0] = Int32GetDatum(MyProcPid);
	values[1] = served->queues;
	nulls[1] = served->queues == (Datum) 0 ? 'n' : ' ';
	values[2] = served->others != (Datum) 0 ? served->others : empty_text_array();
	values[3] = ex->queues;
	values[4] = ex->handlers;
	if (SPI_execute_plan(claim_statement(served->batch_size, array_length_of(ex->handlers) > 0), values, nulls, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "taskq: claiming tasks failed");

	n = (int) SPI_processed;
	task_columns(SPI_tuptable->tupdesc, &cols);
	old = MemoryContextSwitchTo(cxt);
	*tasks = palloc0(sizeof(TaskqTask) * Max(n, 1));
	for (i = 0; i < SPI_processed; i++)
		decode_task(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &cols, &(*tasks)[i]);
	MemoryContextSwitchTo(old);
	return n;
}

/*
 * When something next becomes due: the earliest future run_at of a queued
 * task (returned), and the earliest lease to run out (*lease); DT_NOEND
 * for none.  Both are index range scans.
 */
TimestampTz
taskq_outbox_next_due(TimestampTz *lease)
{
	TupleDesc	desc;
	HeapTuple	tup;
	bool		isnull;
	Datum		d;

	if (SPI_execute_plan(taskq_prepare(&next_due_plan,
									   "SELECT"
									   " (SELECT run_at FROM taskq.tasks WHERE status OPERATOR(pg_catalog.=) 'queued'"
									   "   AND run_at OPERATOR(pg_catalog.>) pg_catalog.now() ORDER BY run_at LIMIT 1) AS run_at,"
									   " (SELECT lease_until FROM taskq.tasks WHERE status OPERATOR(pg_catalog.=) 'dispatched'"
									   "   ORDER BY lease_until LIMIT 1) AS lease_until",
									   0, NULL),
						 NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: computing the next due time failed");
	desc = SPI_tuptable->tupdesc;
	tup = SPI_tuptable->vals[0];
	d = value_of(tup, desc, column(desc, "lease_until"), &isnull);
	*lease = isnull ? DT_NOEND : DatumGetTimestampTz(d);
	d = value_of(tup, desc, column(desc, "run_at"), &isnull);
	return isnull ? DT_NOEND : DatumGetTimestampTz(d);
}

/* ----------------------------------------------------------------
 * Outcomes
 * ----------------------------------------------------------------
 */

/*
 * "The task is still ours", for the outcome updates.  Written with a text
 * comparison on purpose: "status = 'running'" could let the planner scan
 * a partial index whose predicate it implies instead of the primary key,
 * visiting every dead entry of that index on each update.
 */
#define STILL_OURS \
	"status::pg_catalog.text OPERATOR(pg_catalog.=) 'running' AND worker_pid OPERATOR(pg_catalog.=) $5"

/*
 * Delete a task that completed, if it is still ours: false if not
 * (cancelled meanwhile).  One dead row version instead of the two that
 * marking it and removing it later cost, and no index entries for the
 * completed one.
 */
bool
taskq_outbox_remove_completed(int64 id)
{
	Oid			types[2] = {INT8OID, INT4OID};
	Datum		values[2];

	values[0] = Int64GetDatum(id);
	values[1] = Int32GetDatum(MyProcPid);
	if (SPI_execute_plan(taskq_prepare(&remove_plan,
									   "DELETE FROM taskq.tasks WHERE id OPERATOR(pg_catalog.=) $1"
									   " AND status::pg_catalog.text OPERATOR(pg_catalog.=) 'running'"
									   " AND worker_pid OPERATOR(pg_catalog.=) $2",
									   2, types),
						 values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "taskq: removing completed task " INT64_FORMAT " failed", id);
	return SPI_processed == 1;
}

/*
 * Record a handler's success, if the task is still ours: 'completed' with
 * its result, or 'dispatched' with a lease of ack_timeout_ms.  False if
 * the task is no longer ours (cancelled meanwhile).
 */
bool
taskq_outbox_complete(int64 id, const TaskqOutcome *out, int ack_timeout_ms)
{
	Oid			types[5] = {INT8OID, TEXTOID, JSONBOID, INT4OID, INT4OID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(out->status);
	values[2] = out->result;
	nulls[2] = out->result_null ? 'n' : ' ';
	values[3] = Int32GetDatum(ack_timeout_ms);
	values[4] = Int32GetDatum(MyProcPid);
	if (SPI_execute_plan(taskq_prepare(&success_plan,
									   "UPDATE taskq.tasks SET status = $2::taskq.status,"
									   " attempts = attempts OPERATOR(pg_catalog.+) 1, result = $3, worker_pid = NULL,"
									   " finished_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'completed' THEN pg_catalog.clock_timestamp() END,"
									   " lease_until = CASE WHEN $2 OPERATOR(pg_catalog.=) 'dispatched'"
									   "   THEN pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $4 OPERATOR(pg_catalog./) 1000.0) END"
									   " WHERE id OPERATOR(pg_catalog.=) $1 AND " STILL_OURS,
									   5, types),
						 values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "taskq: recording the outcome of task " INT64_FORMAT " failed", id);
	return SPI_processed == 1;
}

/*
 * Record a failed attempt, if the task is still ours: queued again after
 * delay_ms, or, with delay_ms < 0, ended 'timeout' (timed_out) or
 * 'failed'.  error must fit TASKQ_ERROR_MAXLEN.  False if the task is no
 * longer ours (cancelled meanwhile).
 */
bool
taskq_outbox_fail(int64 id, const char *error, int64 delay_ms, bool timed_out)
{
	Oid			types[5] = {INT8OID, TEXTOID, INT8OID, TEXTOID, INT4OID};
	Datum		values[5];

	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(error);
	values[2] = Int64GetDatum(delay_ms);
	values[3] = CStringGetTextDatum(timed_out ? "timeout" : "failed");
	values[4] = Int32GetDatum(MyProcPid);
	if (SPI_execute_plan(taskq_prepare(&failure_plan,
									   "UPDATE taskq.tasks SET attempts = attempts OPERATOR(pg_catalog.+) 1,"
									   " last_error = $2, worker_pid = NULL,"
									   " status = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN $4 ELSE 'queued' END::taskq.status,"
									   " finished_at = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN pg_catalog.clock_timestamp() END,"
									   " run_at = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN run_at"
									   "   ELSE pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $3 OPERATOR(pg_catalog./) 1000.0) END"
									   " WHERE id OPERATOR(pg_catalog.=) $1 AND " STILL_OURS,
									   5, types),
						 values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "taskq: recording the failure of task " INT64_FORMAT " failed", id);
	return SPI_processed == 1;
}

/* ----------------------------------------------------------------
 * Maintenance
 * ----------------------------------------------------------------
 */

/*
 * Charge suspects and requeue orphans, in one statement: see the
 * dispatcher's reap_orphans() for what it means.  $1 is the suspects that
 * may be 'queued' (a claim lost in a crash).
 */
#define REAP_SQL \
	"UPDATE taskq.tasks t SET" \
	"  crashes = t.crashes OPERATOR(pg_catalog.+) o.crash," \
	"  attempts = t.attempts OPERATOR(pg_catalog.+) o.charge," \
	"  worker_pid = NULL," \
	"  last_error = CASE WHEN o.crash OPERATOR(pg_catalog.=) 1" \
	"    THEN 'the dispatcher exited abnormally while running this task (crash '" \
	"         OPERATOR(pg_catalog.||) (t.crashes OPERATOR(pg_catalog.+) 1)::pg_catalog.text" \
	"         OPERATOR(pg_catalog.||) ', counted as attempt '" \
	"         OPERATOR(pg_catalog.||) (t.attempts OPERATOR(pg_catalog.+) 1)::pg_catalog.text OPERATOR(pg_catalog.||) ')'" \
	"    WHEN o.charge OPERATOR(pg_catalog.=) 1" \
	"    THEN 'timed out after '" \
	"         OPERATOR(pg_catalog.||) pg_catalog.ceil(pg_catalog.date_part('epoch', t.timeout) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8::pg_catalog.text" \
	"         OPERATOR(pg_catalog.||) ' ms; the handler did not stop within taskq.interrupt_grace, so its dispatcher was terminated'" \
	"    ELSE t.last_error END," \
	"  status = CASE WHEN t.attempts OPERATOR(pg_catalog.+) o.charge OPERATOR(pg_catalog.<) t.max_attempts THEN 'queued'" \
	"    WHEN o.crash OPERATOR(pg_catalog.=) 1 THEN 'failed' ELSE 'timeout' END::taskq.status," \
	"  finished_at = CASE WHEN t.attempts OPERATOR(pg_catalog.+) o.charge OPERATOR(pg_catalog.>=) t.max_attempts" \
	"    THEN pg_catalog.clock_timestamp() END" \
	" FROM (SELECT id, COALESCE(cause OPERATOR(pg_catalog.=) 'crash', false)::pg_catalog.int4 AS crash," \
	"         (cause IS NOT NULL)::pg_catalog.int4 AS charge" \
	"       FROM (SELECT id, taskq._orphan_cause(id) AS cause" \
	"             FROM taskq.tasks" \
	"             WHERE (status OPERATOR(pg_catalog.=) 'running'" \
	"                    AND NOT taskq._dispatcher_alive(worker_pid, started_at))" \
	"                OR (status OPERATOR(pg_catalog.=) 'queued'" \
	"                    AND id OPERATOR(pg_catalog.=) ANY ($1))" \
	"             FOR UPDATE SKIP LOCKED) x) o" \
	" WHERE t.id OPERATOR(pg_catalog.=) o.id" \
	" RETURNING t.id, o.crash, o.charge, t.status::pg_catalog.text AS status, t.queue, t.handler, t.attempts"

/*
 * Run the reaping statement with these suspects; the tasks it touched go
 * into *reaped (palloc'd in the current context).  Returns how many.
 */
int
taskq_outbox_reap(const int64 *suspects, int nsuspects, TaskqReaped **reaped)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(nsuspects, 1));
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];
	TupleDesc	desc;
	int			c_id, c_crash, c_charge, c_status, c_queue, c_handler, c_attempts;
	int			ret;
	uint64		i;

	for (i = 0; i < (uint64) nsuspects; i++)
		elems[i] = Int64GetDatum(suspects[i]);
	values[0] = PointerGetDatum(construct_array(elems, nsuspects, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	ret = SPI_execute_plan(taskq_prepare(&reap_plan, REAP_SQL, 1, types), values, NULL, false, 0);
	if (ret != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "taskq: reaping orphaned tasks failed: %s", SPI_result_code_string(ret));

	desc = SPI_tuptable->tupdesc;
	c_id = column(desc, "id");
	c_crash = column(desc, "crash");
	c_charge = column(desc, "charge");
	c_status = column(desc, "status");
	c_queue = column(desc, "queue");
	c_handler = column(desc, "handler");
	c_attempts = column(desc, "attempts");
	*reaped = palloc0(sizeof(TaskqReaped) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TaskqReaped *r = &(*reaped)[i];

		r->id = DatumGetInt64(value_not_null(tup, desc, c_id));
		r->crash = DatumGetInt32(value_not_null(tup, desc, c_crash)) == 1;
		r->charge = DatumGetInt32(value_not_null(tup, desc, c_charge)) == 1;
		r->status = SPI_getvalue(tup, desc, c_status);
		r->queue = SPI_getvalue(tup, desc, c_queue);
		r->handler = SPI_getvalue(tup, desc, c_handler);
		r->attempts = DatumGetInt32(value_not_null(tup, desc, c_attempts));
	}
	return (int) SPI_processed;
}

/* Make a queued task wait delay_ms before it is due again. */
void
taskq_outbox_delay(int64 id, int64 delay_ms)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		values[2];

	values[0] = Int64GetDatum(id);
	values[1] = Int64GetDatum(delay_ms);
	if (SPI_execute_plan(taskq_prepare(&backoff_plan,
									   "UPDATE taskq.tasks SET run_at = pg_catalog.clock_timestamp()"
									   " OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $2 OPERATOR(pg_catalog./) 1000.0)"
									   " WHERE id OPERATOR(pg_catalog.=) $1",
									   2, types),
						 values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "taskq: delaying the retry of task " INT64_FORMAT " failed", id);
}

/*
 * Notify tasks whose lease ran out are delivered again, or fail when they
 * have no attempt left.  each is called for every such task, with whether
 * it failed.
 */
void
taskq_outbox_expire_leases(TaskqLeaseFn each)
{
	TupleDesc	desc;
	int			c_queue, c_handler, c_failed;
	int			ret;
	uint64		i;

	ret = SPI_execute_plan(taskq_prepare(&lease_plan,
										 "UPDATE taskq.tasks SET lease_until = NULL,"
										 " status = CASE WHEN attempts OPERATOR(pg_catalog.>=) max_attempts"
										 "   THEN 'failed' ELSE 'queued' END::taskq.status,"
										 " finished_at = CASE WHEN attempts OPERATOR(pg_catalog.>=) max_attempts"
										 "   THEN pg_catalog.clock_timestamp() END,"
										 " run_at = pg_catalog.clock_timestamp(),"
										 " last_error = 'no ack() within taskq.ack_timeout (attempt '"
										 "   OPERATOR(pg_catalog.||) attempts::pg_catalog.text OPERATOR(pg_catalog.||) ')'"
										 " WHERE id OPERATOR(pg_catalog.=) ANY (SELECT id FROM taskq.tasks"
										 "   WHERE status OPERATOR(pg_catalog.=) 'dispatched'"
										 "   AND lease_until OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()"
										 "   FOR UPDATE SKIP LOCKED)"
										 " RETURNING queue, handler, status OPERATOR(pg_catalog.=) 'failed' AS failed",
										 0, NULL),
						   NULL, NULL, false, 0);
	if (ret != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "taskq: expiring leases failed");
	desc = SPI_tuptable->tupdesc;
	c_queue = column(desc, "queue");
	c_handler = column(desc, "handler");
	c_failed = column(desc, "failed");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];

		each(SPI_getvalue(tup, desc, c_queue), SPI_getvalue(tup, desc, c_handler),
			 DatumGetBool(value_not_null(tup, desc, c_failed)));
	}
}

/* Queued tasks past expires_at end 'expired', up to 10000 at a time. */
void
taskq_outbox_expire_tasks(void)
{
	int			ret;

	ret = SPI_execute_plan(taskq_prepare(&expire_plan,
										 "UPDATE taskq.tasks SET status = 'expired', finished_at = pg_catalog.now()"
										 " WHERE id OPERATOR(pg_catalog.=) ANY (SELECT id FROM taskq.tasks"
										 "   WHERE status OPERATOR(pg_catalog.=) 'queued'"
										 "   AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
										 "   LIMIT 10000 FOR UPDATE SKIP LOCKED)",
										 0, NULL),
						   NULL, NULL, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "taskq: expiring tasks failed");
}

/* Ended tasks older than retention_s are removed, up to 10000 at a time. */
void
taskq_outbox_remove_ended(int retention_s)
{
	Oid			types[1] = {INT4OID};
	Datum		values[1];
	int			ret;

	values[0] = Int32GetDatum(retention_s);
	ret = SPI_execute_plan(taskq_prepare(&retention_plan,
										 "DELETE FROM taskq.tasks WHERE id OPERATOR(pg_catalog.=) ANY (SELECT id FROM taskq.tasks"
										 "   WHERE status " TASKQ_SQL_ENDED
										 "   AND finished_at OPERATOR(pg_catalog.<) (pg_catalog.now()"
										 "     OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))"
										 "   LIMIT 10000 FOR UPDATE SKIP LOCKED)",
										 1, types),
						   values, NULL, false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "taskq: removing old tasks failed");
}
