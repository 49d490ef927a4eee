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

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/plancache.h"
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
 * Running a statement
 * ----------------------------------------------------------------
 */

/*
 * A fixed statement of the API, prepared at its first use and kept for the
 * backend's life.  Declaring the text, the parameter types and the result
 * expected together, next to the function that runs it, leaves a single
 * place (run()) that prepares, executes and checks, instead of one copy
 * of that shape per statement.
 */
typedef struct Statement
{
	SPIPlanPtr	plan;			/* kept once prepared */
	const char *what;			/* "<what> failed" if SPI answers otherwise */
	int			expect;			/* SPI_OK_* */
	bool		read_only;		/* no new snapshot: see SPI_execute_plan */
	int			nargs;
	Oid			types[16];
	const char *sql;
} Statement;

/*
 * Execute a prepared plan and check SPI's answer: every statement here is
 * ours, so any other answer than the expected one is a bug, reported with
 * what the statement does.
 */
static void
execute(SPIPlanPtr plan, Datum *values, const char *nulls, bool read_only,
		long count, int expect, const char *what)
{
	int			ret = SPI_execute_plan(plan, values, nulls, read_only, count);

	if (ret != expect)
		elog(ERROR, "taskq: %s failed: %s", what, SPI_result_code_string(ret));
}

/* Prepare (once), execute and check one of the fixed statements. */
static void
run(Statement *st, Datum *values, const char *nulls, long count)
{
	execute(taskq_prepare(&st->plan, st->sql, st->nargs, st->types),
			values, nulls, st->read_only, count, st->expect, st->what);
}

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

/*
 * The plain claim's skip_* columns of a claimed task: its queue's first
 * candidate left to another claim (CLAIM_SQL_SKIPPED_COLUMNS), if any.
 */
static void
decode_skipped(HeapTuple tup, TupleDesc desc, TaskqTask *t)
{
	bool		isnull;
	Datum		p = value_of(tup, desc, column(desc, "skip_priority"), &isnull);

	t->skipped = !isnull;
	if (!t->skipped)
		return;
	t->skip_priority = DatumGetInt32(p);
	t->skip_run_at = DatumGetTimestampTz(value_not_null(tup, desc, column(desc, "skip_run_at")));
	t->skip_id = DatumGetInt64(value_not_null(tup, desc, column(desc, "skip_id")));
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
 * The queues and handlers the next plain claim skips: paused queues and
 * the queues that taskq._claim_queue() claims (those with limits, aging
 * or group keys), and disabled handlers; and the latter queues apart, in
 * name order, the order their rows are locked in.  The arrays stay in the
 * SPI result, valid until the caller's next SPI statement but one:
 * taskq_outbox_claim() is that statement; the caller copies the limited
 * queues' names before.
 * External handlers count as disabled here: their tasks wait for
 * external workers (external.c).
 */
void
taskq_outbox_read_exclusions(TaskqExclusions *ex)
{
	TupleDesc	desc;
	HeapTuple	tup;

	execute(taskq_prepare(&exclusions_plan,
									   "SELECT ARRAY(SELECT name FROM taskq.queues WHERE paused"
									   "   OR " TASKQ_QUEUE_LIMITED_SQL ") AS paused_queues,"
									   " ARRAY(SELECT name FROM taskq.queues WHERE NOT paused"
									   "   AND " TASKQ_QUEUE_LIMITED_SQL " ORDER BY name) AS limited_queues,"
									   " ARRAY(SELECT name FROM taskq.handlers WHERE NOT enabled"
									   "       OR kind OPERATOR(pg_catalog.=) 'external') AS disabled_handlers",
									   0, NULL),
			NULL, NULL, true, 1, SPI_OK_SELECT, "reading paused queues");
	desc = SPI_tuptable->tupdesc;
	tup = SPI_tuptable->vals[0];
	ex->queues = value_not_null(tup, desc, column(desc, "paused_queues"));
	ex->handlers = value_not_null(tup, desc, column(desc, "disabled_handlers"));
	ex->limited = value_not_null(tup, desc, column(desc, "limited_queues"));
	ex->n = array_length_of(ex->queues) + array_length_of(ex->handlers);
	ex->nlimited = array_length_of(ex->limited);
}

/*
 * The names of the limited queues of ex, palloc'd in the current context
 * (ex's arrays do not outlive the next statements).
 */
char	  **
taskq_outbox_limited_queues(const TaskqExclusions *ex)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;
	char	  **names;

	deconstruct_array(DatumGetArrayTypeP(ex->limited), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	names = palloc(sizeof(char *) * Max(n, 1));
	for (i = 0; i < n; i++)
		names[i] = TextDatumGetCString(elems[i]);
	return names;
}

static Statement claim_queue_stmt = {
	.what = "claiming tasks of a limited queue", .expect = SPI_OK_SELECT,
	.nargs = 5, .types = {TEXTOID, INT4OID, INT4OID, INT4OID, TEXTARRAYOID},
	.sql = "SELECT * FROM taskq._claim_queue($1, $2, $3, $4, $5, false)"
};

/*
 * Claim up to max_tasks due tasks of one limited queue through
 * taskq._claim_queue(), which enforces its limits (share: how many
 * dispatchers serve it); skip: the disabled handlers (text[] datum).  The
 * tasks are appended to *tasks (allocated in cxt with room for
 * taskq.batch_size) from position at; returns how many.
 */
int
taskq_outbox_claim_queue(const char *queue, int max_tasks, int share, Datum skip,
						 MemoryContext cxt, TaskqTask *tasks)
{
	Datum		values[5] = {CStringGetTextDatum(queue), Int32GetDatum(max_tasks),
	Int32GetDatum(share), Int32GetDatum(MyProcPid), skip};
	TaskColumns cols;
	MemoryContext old;
	uint64		i;

	run(&claim_queue_stmt, values, NULL, 0);
	task_columns(SPI_tuptable->tupdesc, &cols);
	old = MemoryContextSwitchTo(cxt);
	for (i = 0; i < SPI_processed && (int) i < max_tasks; i++)
		decode_task(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &cols, &tasks[i]);
	MemoryContextSwitchTo(old);
	return (int) i;
}

/*
 * Setting claimed tasks (the rows of %s, which selects their ids) to the
 * claimant's status, a SQL expression ('running' for a dispatcher,
 * 'dispatched' for an external worker), with $1 as the pid to record and
 * set_more's further ", column = value" assignments; 'expired' instead
 * when past expires_at; the last %s adds returned columns.  One text for
 * every claimant.
 */
#define CLAIM_SQL_SET \
	" UPDATE taskq.tasks t SET" \
	"  status = CASE WHEN t.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()" \
	"    THEN 'expired' ELSE %s END::taskq.status," \
	"  worker_pid = $1, started_at = pg_catalog.now()," \
	"  finished_at = CASE WHEN t.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()" \
	"    THEN pg_catalog.now() END%s" \
	" FROM %s c WHERE t.id OPERATOR(pg_catalog.=) c.id" \
	" RETURNING t.id, t.handler, t.queue, t.priority, t.attempts, t.max_attempts," \
	"  pg_catalog.ceil(pg_catalog.date_part('epoch', t.timeout) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8 AS timeout_ms," \
	"  t.owner::pg_catalog.oid AS owner, t.run_at, t.payload, t.metadata, t.lease_until," \
	"  t.status OPERATOR(pg_catalog.=) 'expired' AS expired%s"

/*
 * An external worker's claim (external.c): due tasks of one queue in
 * dispatch order, read from tasks_external_idx, SKIP LOCKED.  The queue
 * has no group keys (a grouped or limited one is claimed through
 * taskq._claim_queue()), so its tasks are (queue, NULL) in that index.
 */
#define CLAIM_SQL_HEAD \
	"WITH c AS (" \
	" SELECT t.id FROM taskq.tasks t" \
	" WHERE t.status OPERATOR(pg_catalog.=) 'queued' AND t.external AND t.group_key IS NULL" \
	"   AND t.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
#define CLAIM_SQL_TAIL \
	" ORDER BY " TASKQ_SQL_UNGROUPED_ORDER \
	" LIMIT %s FOR UPDATE SKIP LOCKED)"

/*
 * The external claim's text (palloc'd): filter is added to the due tasks'
 * condition, limit is the LIMIT (a number or a parameter), status the
 * status a claimed task gets, set_more further assignments (see
 * CLAIM_SQL_SET).
 */
char *
taskq_outbox_claim_sql(const char *filter, const char *limit, const char *status,
					   const char *set_more)
{
	return psprintf(CLAIM_SQL_HEAD "%s" CLAIM_SQL_TAIL CLAIM_SQL_SET,
					filter, limit, status, set_more, "c", "");
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
 * executor, or the queues its cursors know: cursors.c), $3 the queues
 * other executors serve (for the default one; never claimed),
 * $4 the paused queues, $5 the disabled handlers.  The batch size is
 * written in, also as the locked rows' LIMIT, which the shares already
 * bound: a LIMIT the planner cannot read (a parameter, or s.n) makes the
 * generic plan guess a tenth of the table and hash-join the UPDATE with a
 * sequential scan of taskq.tasks, every batch (a drain of 1,400 tasks/s).
 */
/* The skip scan: each queue with a queued task; first may add a condition. */
#define QUEUED_QUEUES_SQL(first) \
	"WITH RECURSIVE queued(queue) AS (" \
	"  (SELECT t.queue FROM taskq.tasks t WHERE " first \
	"     t.status OPERATOR(pg_catalog.=) 'queued' AND NOT t.external" \
	"   ORDER BY t.queue LIMIT 1)" \
	"  UNION ALL" \
	"  SELECT (SELECT t.queue FROM taskq.tasks t" \
	"          WHERE t.status OPERATOR(pg_catalog.=) 'queued' AND NOT t.external" \
	"            AND t.queue OPERATOR(pg_catalog.>) q.queue ORDER BY t.queue LIMIT 1)" \
	"  FROM queued q WHERE q.queue IS NOT NULL)"
#define CLAIM_SQL_SERVED \
	QUEUED_QUEUES_SQL("$2 IS NULL AND") "," \
	" served(queue) AS (" \
	"  SELECT s.queue FROM (SELECT x.queue FROM pg_catalog.unnest($2::pg_catalog.text[]) AS x(queue)" \
	"                      WHERE x.queue OPERATOR(pg_catalog.<>) ALL ($3)" \
	"                      UNION ALL" \
	"                      SELECT q.queue FROM queued q WHERE q.queue IS NOT NULL" \
	"                        AND q.queue OPERATOR(pg_catalog.<>) ALL ($3)) s" \
	"  WHERE s.queue OPERATOR(pg_catalog.<>) ALL ($4)),"

/*
 * Each served queue's claim cursor (cursors.c) as the key its claim reads
 * from: $6 to $9 are the cursors' queues, priorities, run_at and ids; a
 * queue without one reads from its start (priority TASKQ_REWIND_ALL).
 */
#define CLAIM_SQL_BOUNDS \
	" bounds AS (" \
	"  SELECT s.queue, COALESCE(c.p, 2147483647) AS bp," \
	"   COALESCE(c.r, '-infinity'::pg_catalog.timestamptz) AS br, COALESCE(c.i, 0) AS bi" \
	"  FROM served s LEFT JOIN ROWS FROM (pg_catalog.unnest($6::pg_catalog.text[])," \
	"   pg_catalog.unnest($7::pg_catalog.int4[]), pg_catalog.unnest($8::pg_catalog.timestamptz[])," \
	"   pg_catalog.unnest($9::pg_catalog.int8[]))" \
	"   AS c(queue, p, r, i) ON c.queue OPERATOR(pg_catalog.=) s.queue),"

/*
 * One queue's due tasks of enabled handlers in dispatch order from its
 * bound b, read from tasks_queue_idx, where a queue that the plain claim
 * serves (no limits, no group keys) is (queue, NULL): the bound's
 * priority from its (run_at, id), then every lower priority.  Two range scans,
 * the second read only if the first gives too few: one condition
 * "(priority, run_at) after the bound" would be no index range, the
 * priority being descending.  The first %s is what is selected, the
 * second the handler filter (HANDLER_FILTER or nothing), the third what
 * follows ORDER BY (the LIMIT and any locking clause).
 */
#define CLAIM_SQL_DUE(range) \
	"SELECT %s FROM taskq.tasks t" \
	" WHERE t.queue OPERATOR(pg_catalog.=) b.queue AND t.group_key IS NULL" \
	"   AND t.status OPERATOR(pg_catalog.=) 'queued' AND NOT t.external" \
	"   AND t.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()%s AND " range \
	" ORDER BY " TASKQ_SQL_UNGROUPED_ORDER " %s"
#define CLAIM_SQL_AT_BOUND \
	CLAIM_SQL_DUE("t.priority OPERATOR(pg_catalog.=) b.bp AND (t.run_at, t.id) OPERATOR(pg_catalog.>=) (b.br, b.bi)")
#define CLAIM_SQL_BELOW_BOUND \
	CLAIM_SQL_DUE("t.priority OPERATOR(pg_catalog.<) b.bp")

#define HANDLER_FILTER " AND t.handler OPERATOR(pg_catalog.<>) ALL ($5)"

#define CLAIM_SQL_MERGE \
	" candidates AS (" \
	"  SELECT b.queue, c.priority, c.run_at, c.id FROM bounds b," \
	"   LATERAL (SELECT u.id, u.priority, u.run_at FROM (" \
	"    (" CLAIM_SQL_AT_BOUND ") UNION ALL (" CLAIM_SQL_BELOW_BOUND ")) u LIMIT %d) c" \
	"  ORDER BY c.priority DESC, c.run_at, c.id LIMIT %d)," \
	" shares AS (SELECT queue, pg_catalog.count(*) AS n FROM candidates GROUP BY queue)," \
	" locked AS (" \
	"  SELECT l.id FROM shares s JOIN bounds b ON b.queue OPERATOR(pg_catalog.=) s.queue, LATERAL (" \
	"   SELECT a.id FROM (" CLAIM_SQL_AT_BOUND ") a" \
	"   UNION ALL SELECT z.id FROM (" CLAIM_SQL_BELOW_BOUND ") z LIMIT s.n) l LIMIT %d)," \
	" skipped AS (" \
	"  SELECT DISTINCT ON (x.queue) x.queue, x.priority, x.run_at, x.id FROM candidates x" \
	"  WHERE NOT EXISTS (SELECT FROM locked l WHERE l.id OPERATOR(pg_catalog.=) x.id)" \
	"  ORDER BY x.queue, x.priority DESC, x.run_at, x.id)"

/*
 * Per claimed task, its queue's first candidate that the claim did not
 * lock (someone else held it): where the queue's cursor must stop.
 */
#define CLAIM_SQL_SKIPPED_COLUMNS \
	", (SELECT k.priority FROM skipped k WHERE k.queue OPERATOR(pg_catalog.=) t.queue) AS skip_priority" \
	", (SELECT k.run_at FROM skipped k WHERE k.queue OPERATOR(pg_catalog.=) t.queue) AS skip_run_at" \
	", (SELECT k.id FROM skipped k WHERE k.queue OPERATOR(pg_catalog.=) t.queue) AS skip_id"


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
	Oid			types[9] = {INT4OID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID};
	const char *filter = excluding ? HANDLER_FILTER : "";
	SPIPlanPtr *cache = excluding ? &claim_excluding_plan : &claim_plan;
	char	   *limit = psprintf("LIMIT %d", batch_size);
	const char *lock = "LIMIT s.n FOR UPDATE OF t SKIP LOCKED";
	char	   *sql;

	if (*cache != NULL)
		return *cache;
	sql = psprintf(CLAIM_SQL_SERVED CLAIM_SQL_BOUNDS CLAIM_SQL_MERGE CLAIM_SQL_SET,
				   "t.id, t.priority, t.run_at", filter, limit,
				   "t.id, t.priority, t.run_at", filter, limit, batch_size, batch_size,
				   "t.id", filter, lock, "t.id", filter, lock, batch_size,
				   "'running'", "", "locked", CLAIM_SQL_SKIPPED_COLUMNS);
	return excluding ? taskq_prepare_custom(cache, sql, 9, types) :
		taskq_prepare_generic(cache, sql, 9, types);
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

/*
 * Have every plan of this backend made again when taskq.tasks has grown
 * or shrunk more than twofold (and by more than GROWTH_SLACK_BLOCKS)
 * since they were made.  The planner costs a scan by the table's size
 * when it plans; a plan made while the table was empty (a new install,
 * after TRUNCATE) reads the whole table once per row when the table has
 * grown, and nothing replaces it until an ANALYZE happens to invalidate
 * it: 100 ms a maintenance pass with 1,000 rows.  Called at each
 * maintenance pass, in its transaction; costs one read of the table's size.
 */
#define GROWTH_SLACK_BLOCKS 8

void
taskq_outbox_replan_on_growth(void)
{
	static BlockNumber planned_at = 0;
	Oid			nsp = get_namespace_oid("taskq", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("tasks", nsp) : InvalidOid;
	Relation	rel;
	BlockNumber now;

	if (!OidIsValid(relid))
		return;
	rel = table_open(relid, AccessShareLock);
	now = RelationGetNumberOfBlocks(rel);
	table_close(rel, NoLock);
	if (now <= 2 * planned_at + GROWTH_SLACK_BLOCKS &&
		planned_at <= 2 * now + GROWTH_SLACK_BLOCKS)
		return;
	ResetPlanCache();
	planned_at = now;
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
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
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
	values[5] = served->cursor_queues;
	values[6] = served->cursor_priorities;
	values[7] = served->cursor_run_ats;
	values[8] = served->cursor_ids;
	execute(claim_statement(served->batch_size, array_length_of(ex->handlers) > 0),
			values, nulls, false, 0, SPI_OK_UPDATE_RETURNING, "claiming tasks");

	n = (int) SPI_processed;
	task_columns(SPI_tuptable->tupdesc, &cols);
	old = MemoryContextSwitchTo(cxt);
	*tasks = palloc0(sizeof(TaskqTask) * Max(served->batch_size, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		decode_task(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &cols, &(*tasks)[i]);
		decode_skipped(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &(*tasks)[i]);
	}
	MemoryContextSwitchTo(old);
	return n;
}

/*
 * When something next becomes due: the earliest future run_at of a queued
 * task or time a rate limit lets a held task start (returned), and the
 * earliest lease to run out (*lease); DT_NOEND for none.  Index range
 * scans, and taskq.queues, which is small.  A queued task not yet due
 * was delayed (run_at > enqueued_at, which the enqueue made now()): that
 * clause names tasks_scheduled_idx's predicate.
 */
TimestampTz
taskq_outbox_next_due(TimestampTz *lease)
{
	TimestampTz due;
	TupleDesc	desc;
	HeapTuple	tup;
	bool		isnull;
	Datum		d;

	execute(taskq_prepare(&next_due_plan,
									   "SELECT"
									   " (SELECT run_at FROM taskq.tasks WHERE status OPERATOR(pg_catalog.=) 'queued'"
									   "   AND run_at OPERATOR(pg_catalog.>) enqueued_at"
									   "   AND run_at OPERATOR(pg_catalog.>) pg_catalog.now() ORDER BY run_at LIMIT 1) AS run_at,"
									   " (SELECT lease_until FROM taskq.tasks WHERE status OPERATOR(pg_catalog.=) 'dispatched'"
									   "   ORDER BY lease_until LIMIT 1) AS lease_until,"
									   " (SELECT pg_catalog.min(held_until) FROM taskq.queues"
									   "   WHERE held_until OPERATOR(pg_catalog.>) pg_catalog.now()) AS held_until",
									   0, NULL),
			NULL, NULL, true, 1, SPI_OK_SELECT, "computing the next due time");
	desc = SPI_tuptable->tupdesc;
	tup = SPI_tuptable->vals[0];
	d = value_of(tup, desc, column(desc, "lease_until"), &isnull);
	*lease = isnull ? DT_NOEND : DatumGetTimestampTz(d);
	d = value_of(tup, desc, column(desc, "run_at"), &isnull);
	due = isnull ? DT_NOEND : DatumGetTimestampTz(d);
	d = value_of(tup, desc, column(desc, "held_until"), &isnull);
	return isnull ? due : Min(due, DatumGetTimestampTz(d));
}

/*
 * fn(queue) for each queue with queued tasks for the dispatchers, except
 * those in others (text[], or 0 for none): the default executor's served
 * queues, found as the claim finds them (CLAIM_SQL_SERVED's skip scan),
 * for its claim cursors to keep (cursors.c).
 */
static Statement queued_queues_stmt = {
	.what = "listing the queues with queued tasks", .expect = SPI_OK_SELECT,
	.nargs = 1, .types = {TEXTARRAYOID},
	.sql = QUEUED_QUEUES_SQL("")
	" SELECT q.queue FROM queued q WHERE q.queue IS NOT NULL"
	"   AND q.queue OPERATOR(pg_catalog.<>) ALL ($1)"
};

void
taskq_outbox_queued_queues(Datum others, void (*fn) (const char *queue))
{
	Datum		values[1];
	uint64		i;

	values[0] = others != (Datum) 0 ? others : empty_text_array();
	run(&queued_queues_stmt, values, NULL, 0);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		fn(TextDatumGetCString(value_of(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
										&isnull)));
	}
}

/*
 * For each delayed task (tasks_scheduled_idx) that became due after since
 * and is now claimable by the plain claim, fn(queue, priority, run_at):
 * the claim cursors' rewinds for run_at reached (cursors.c).  Ordered by
 * run_at, so that the plan reads only the window's range of that index
 * (tasks_queue_idx has the columns too, but not in that order).
 */
static Statement due_since_stmt = {
	.what = "reading the delayed tasks that became due", .expect = SPI_OK_SELECT,
	.nargs = 1, .types = {TIMESTAMPTZOID},
	.sql = "SELECT t.queue, t.priority, t.run_at FROM taskq.tasks t"
	" WHERE t.status OPERATOR(pg_catalog.=) 'queued' AND t.run_at OPERATOR(pg_catalog.>) t.enqueued_at"
	"   AND t.run_at OPERATOR(pg_catalog.>) $1 AND t.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
	"   AND NOT t.external AND t.group_key IS NULL"
	" ORDER BY t.run_at"
};

void
taskq_outbox_due_since(TimestampTz since,
					   void (*fn) (const char *queue, int priority, TimestampTz run_at))
{
	Datum		values[1] = {TimestampTzGetDatum(since)};
	TupleDesc	desc;
	uint64		i;

	run(&due_since_stmt, values, NULL, 0);
	desc = SPI_tuptable->tupdesc;
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		char	   *queue = TextDatumGetCString(value_of(tup, desc, 1, &isnull));
		int			priority = DatumGetInt32(value_of(tup, desc, 2, &isnull));
		TimestampTz run_at = DatumGetTimestampTz(value_of(tup, desc, 3, &isnull));

		fn(queue, priority, run_at);
	}
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
	execute(taskq_prepare(&remove_plan,
									   "DELETE FROM taskq.tasks WHERE id OPERATOR(pg_catalog.=) $1"
									   " AND status::pg_catalog.text OPERATOR(pg_catalog.=) 'running'"
									   " AND worker_pid OPERATOR(pg_catalog.=) $2",
									   2, types),
			values, NULL, false, 0, SPI_OK_DELETE, "removing completed task");
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
	execute(taskq_prepare(&success_plan,
									   "UPDATE taskq.tasks SET status = $2::taskq.status,"
									   " attempts = attempts OPERATOR(pg_catalog.+) 1, result = $3, worker_pid = NULL,"
									   " finished_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'completed' THEN pg_catalog.clock_timestamp() END,"
									   " lease_until = CASE WHEN $2 OPERATOR(pg_catalog.=) 'dispatched'"
									   "   THEN pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $4 OPERATOR(pg_catalog./) 1000.0) END"
									   " WHERE id OPERATOR(pg_catalog.=) $1 AND " STILL_OURS,
									   5, types),
			values, nulls, false, 0, SPI_OK_UPDATE, "recording the outcome");
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
	execute(taskq_prepare(&failure_plan,
									   "UPDATE taskq.tasks SET attempts = attempts OPERATOR(pg_catalog.+) 1,"
									   " last_error = $2, worker_pid = NULL,"
									   " status = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN $4 ELSE 'queued' END::taskq.status,"
									   " finished_at = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN pg_catalog.clock_timestamp() END,"
									   " run_at = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN run_at"
									   "   ELSE pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $3 OPERATOR(pg_catalog./) 1000.0) END"
									   " WHERE id OPERATOR(pg_catalog.=) $1 AND " STILL_OURS,
									   5, types),
			values, NULL, false, 0, SPI_OK_UPDATE, "recording the failure");
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
	uint64		i;

	for (i = 0; i < (uint64) nsuspects; i++)
		elems[i] = Int64GetDatum(suspects[i]);
	values[0] = PointerGetDatum(construct_array(elems, nsuspects, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	execute(taskq_prepare(&reap_plan, REAP_SQL, 1, types),
			values, NULL, false, 0, SPI_OK_UPDATE_RETURNING, "reaping orphaned tasks");

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
	execute(taskq_prepare(&backoff_plan,
									   "UPDATE taskq.tasks SET run_at = pg_catalog.clock_timestamp()"
									   " OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $2 OPERATOR(pg_catalog./) 1000.0)"
									   " WHERE id OPERATOR(pg_catalog.=) $1",
									   2, types),
			values, NULL, false, 0, SPI_OK_UPDATE, "delaying the retry");
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
	uint64		i;

	execute(taskq_prepare(&lease_plan,
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
			NULL, NULL, false, 0, SPI_OK_UPDATE_RETURNING, "expiring leases");
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

	execute(taskq_prepare(&expire_plan,
										 "UPDATE taskq.tasks SET status = 'expired', finished_at = pg_catalog.now()"
										 " WHERE id OPERATOR(pg_catalog.=) ANY (SELECT id FROM taskq.tasks"
										 "   WHERE status OPERATOR(pg_catalog.=) 'queued'"
										 "   AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
										 "   LIMIT 10000 FOR UPDATE SKIP LOCKED)",
										 0, NULL),
			NULL, NULL, false, 0, SPI_OK_UPDATE, "expiring tasks");
}

/* Ended tasks older than retention_s are removed, up to 10000 at a time. */
void
taskq_outbox_remove_ended(int retention_s)
{
	Oid			types[1] = {INT4OID};
	Datum		values[1];

	values[0] = Int32GetDatum(retention_s);
	execute(taskq_prepare(&retention_plan,
										 "DELETE FROM taskq.tasks WHERE id OPERATOR(pg_catalog.=) ANY (SELECT id FROM taskq.tasks"
										 "   WHERE status " TASKQ_SQL_ENDED
										 "   AND finished_at OPERATOR(pg_catalog.<) (pg_catalog.now()"
										 "     OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))"
										 "   LIMIT 10000 FOR UPDATE SKIP LOCKED)",
										 1, types),
			values, NULL, false, 0, SPI_OK_DELETE, "removing old tasks");
}

/* ----------------------------------------------------------------
 * The API's statements: cancel, retry, ack, nack, wait, pause, resume
 * (tasks.c) and the insert (enqueue.c).  They run as the owner of
 * taskq.tasks, which the caller switched to.
 * ----------------------------------------------------------------
 */

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

static Statement lock_stmt = {
	.what = "locking a task", .expect = SPI_OK_SELECT,
	.nargs = 3, .types = {INT8OID, OIDOID, BOOLOID},
	.sql = "SELECT t.status::pg_catalog.text AS status, t.owner::pg_catalog.oid AS owner,"
	" t.handler, t.queue, t.dedupe_key, t.attempts, t.max_attempts,"
	" COALESCE(t.lease_until OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp(), false) AS lapsed"
	" FROM taskq.tasks t LEFT JOIN taskq.handlers h"
	"   ON h.name OPERATOR(pg_catalog.=) t.handler"
	" WHERE t.id OPERATOR(pg_catalog.=) $1 AND" MAY_ACT
	" FOR UPDATE OF t"
};

/*
 * Lock task id if the caller may act on it (MAY_ACT; with
 * handler_owner_may, also as the owner of its handler) and decode it into
 * *t.  False, with nothing locked, if there is no such task the caller
 * may act on: the two cases are one on purpose.
 */
bool
taskq_outbox_lock_task(int64 id, Oid caller, bool handler_owner_may, TaskqLockedTask *t)
{
	Datum		values[3] = {Int64GetDatum(id), ObjectIdGetDatum(caller),
	BoolGetDatum(handler_owner_may)};
	TupleDesc	desc;
	HeapTuple	tup;
	bool		isnull;
	Datum		d;

	run(&lock_stmt, values, NULL, 1);
	if (SPI_processed == 0)
		return false;
	desc = SPI_tuptable->tupdesc;
	tup = SPI_tuptable->vals[0];
	t->id = id;
	t->status = TextDatumGetCString(value_not_null(tup, desc, column(desc, "status")));
	t->owner = DatumGetObjectId(value_not_null(tup, desc, column(desc, "owner")));
	t->handler = TextDatumGetCString(value_not_null(tup, desc, column(desc, "handler")));
	t->queue = TextDatumGetCString(value_not_null(tup, desc, column(desc, "queue")));
	d = value_of(tup, desc, column(desc, "dedupe_key"), &isnull);
	t->dedupe_key = isnull ? NULL : TextDatumGetCString(d);
	t->attempts = DatumGetInt32(value_not_null(tup, desc, column(desc, "attempts")));
	t->max_attempts = DatumGetInt32(value_not_null(tup, desc, column(desc, "max_attempts")));
	t->lapsed = DatumGetBool(value_not_null(tup, desc, column(desc, "lapsed")));
	return true;
}

static Statement lock_ackable_stmt = {
	.what = "locking tasks to acknowledge", .expect = SPI_OK_SELECT,
	.nargs = 3, .types = {INT8ARRAYOID, OIDOID, BOOLOID},
	.sql = "SELECT t.id, t.status OPERATOR(pg_catalog.=) 'dispatched'"
	"   AND COALESCE(t.lease_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp(), true) AS dispatched,"
	" t.handler, t.queue"
	" FROM taskq.tasks t LEFT JOIN taskq.handlers h"
	"   ON h.name OPERATOR(pg_catalog.=) t.handler"
	" WHERE t.id OPERATOR(pg_catalog.=) ANY ($1) AND" MAY_ACT
	" ORDER BY t.id FOR UPDATE OF t"
};

/*
 * Lock, in id order (so that two callers cannot deadlock), the tasks among
 * ids (an int8[] datum) that the caller may acknowledge, as their owner or
 * their handler's; they go into *rows (palloc'd).  Returns how many.  A
 * task whose lease ran out is not "dispatched" any more, even before
 * maintenance has requeued it: its holder lost it.
 */
int
taskq_outbox_lock_ackable(Datum ids, Oid caller, TaskqAckable **rows)
{
	Datum		values[3] = {ids, ObjectIdGetDatum(caller), BoolGetDatum(true)};
	TupleDesc	desc;
	int			c_id, c_dispatched, c_handler, c_queue;
	uint64		i;

	run(&lock_ackable_stmt, values, NULL, 0);
	desc = SPI_tuptable->tupdesc;
	c_id = column(desc, "id");
	c_dispatched = column(desc, "dispatched");
	c_handler = column(desc, "handler");
	c_queue = column(desc, "queue");
	*rows = palloc0(sizeof(TaskqAckable) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TaskqAckable *r = &(*rows)[i];

		r->id = DatumGetInt64(value_not_null(tup, desc, c_id));
		r->dispatched = DatumGetBool(value_not_null(tup, desc, c_dispatched));
		r->handler = TextDatumGetCString(value_not_null(tup, desc, c_handler));
		r->queue = TextDatumGetCString(value_not_null(tup, desc, c_queue));
	}
	return (int) SPI_processed;
}

static Statement cancel_stmt = {
	.what = "cancelling a task", .expect = SPI_OK_UPDATE,
	.nargs = 1, .types = {INT8OID},
	.sql = "UPDATE taskq.tasks SET status = 'cancelled',"
	" finished_at = pg_catalog.now(), lease_until = NULL"
	" WHERE id OPERATOR(pg_catalog.=) $1"
};

/* End a task (locked by the caller) 'cancelled'. */
void
taskq_outbox_cancel(int64 id)
{
	Datum		values[1] = {Int64GetDatum(id)};

	run(&cancel_stmt, values, NULL, 0);
}

static Statement live_holder_stmt = {
	.what = "looking up a dedupe_key", .expect = SPI_OK_SELECT,
	.nargs = 3, .types = {TEXTOID, TEXTOID, OIDOID},
	.sql = "SELECT id FROM taskq.tasks"
	" WHERE handler OPERATOR(pg_catalog.=) $1"
	" AND dedupe_key OPERATOR(pg_catalog.=) $2"
	" AND owner::pg_catalog.oid OPERATOR(pg_catalog.=) $3"
	" AND dedupe_key IS NOT NULL"
	" AND status " TASKQ_SQL_LIVE
};

/*
 * The live task of this role that holds dedupe_key for handler, or 0.
 * Keys are per enqueuing role, as in tasks_dedupe_idx (whose predicate the
 * statement repeats, so that the index serves it): enqueue()'s dedupe
 * lookup and retry()'s refusal share it.
 */
int64
taskq_outbox_live_holder(const char *handler, text *dedupe_key, Oid owner)
{
	Datum		values[3] = {CStringGetTextDatum(handler), PointerGetDatum(dedupe_key),
	ObjectIdGetDatum(owner)};
	TupleDesc	desc;

	run(&live_holder_stmt, values, NULL, 1);
	if (SPI_processed == 0)
		return 0;
	desc = SPI_tuptable->tupdesc;
	return DatumGetInt64(value_not_null(SPI_tuptable->vals[0], desc, column(desc, "id")));
}

static Statement requeue_stmt = {
	.what = "retrying a task", .expect = SPI_OK_UPDATE,
	.nargs = 1, .types = {INT8OID},
	.sql = "UPDATE taskq.tasks SET status = 'queued', attempts = 0,"
	" run_at = pg_catalog.now(), started_at = NULL, finished_at = NULL,"
	" lease_until = NULL, worker_pid = NULL,"
	" expires_at = CASE WHEN expires_at OPERATOR(pg_catalog.<=) pg_catalog.now() THEN NULL ELSE expires_at END"
	" WHERE id OPERATOR(pg_catalog.=) $1"
};

/*
 * Queue an ended task (locked by the caller) again now, with a fresh
 * attempt budget, and without an expiry already past.  The dedupe index
 * may refuse it (a unique violation), which the caller handles.
 */
void
taskq_outbox_requeue(int64 id)
{
	Datum		values[1] = {Int64GetDatum(id)};

	run(&requeue_stmt, values, NULL, 0);
}

static Statement ack_stmt = {
	.what = "acknowledging tasks", .expect = SPI_OK_UPDATE,
	.nargs = 2, .types = {INT8ARRAYOID, JSONBOID},
	.sql = "UPDATE taskq.tasks SET status = 'completed', result = $2,"
	" finished_at = pg_catalog.now(), lease_until = NULL"
	" WHERE id OPERATOR(pg_catalog.=) ANY ($1)"
};

/* Complete the tasks ids (an int8[] datum, locked by the caller) with result. */
void
taskq_outbox_ack(Datum ids, Datum result, bool result_null)
{
	Datum		values[2] = {ids, result};
	char		nulls[2] = {' ', result_null ? 'n' : ' '};

	run(&ack_stmt, values, nulls, 0);
}

static Statement nack_stmt = {
	.what = "rejecting a task", .expect = SPI_OK_UPDATE,
	.nargs = 3, .types = {INT8OID, TEXTOID, INT8OID},
	.sql = "UPDATE taskq.tasks SET last_error = $2, lease_until = NULL,"
	" status = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN 'failed' ELSE 'queued' END::taskq.status,"
	" finished_at = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN pg_catalog.now() END,"
	" run_at = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN run_at"
	"   ELSE pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $3 OPERATOR(pg_catalog./) 1000.0) END"
	" WHERE id OPERATOR(pg_catalog.=) $1"
};

/*
 * A dispatched attempt (locked by the caller) failed with error: the task
 * is queued again after delay_ms, or with delay_ms < 0 ends 'failed'.
 */
void
taskq_outbox_nack(int64 id, const char *error, int64 delay_ms)
{
	Datum		values[3] = {Int64GetDatum(id), CStringGetTextDatum(error),
	Int64GetDatum(delay_ms)};

	run(&nack_stmt, values, NULL, 0);
}

static Statement poll_stmt = {
	.what = "reading a task", .expect = SPI_OK_SELECT,
	.nargs = 1, .types = {INT8OID},
	.sql = "SELECT t AS row, NOT (t.status " TASKQ_SQL_LIVE ") AS ended, t.xmin AS xmin"
	" FROM taskq.tasks t WHERE t.id OPERATOR(pg_catalog.=) $1"
};

/*
 * One look at task id with a fresh snapshot, as the caller (wait()):
 * returns its whole row (a taskq.tasks datum, in the SPI result), whether
 * it ended, and the transaction that last changed it.  *found is false
 * when the caller cannot see such a task.
 */
Datum
taskq_outbox_poll(int64 id, bool *found, bool *ended, TransactionId *xmin)
{
	Datum		values[1] = {Int64GetDatum(id)};
	TupleDesc	desc;
	HeapTuple	tup;

	run(&poll_stmt, values, NULL, 1);
	*found = SPI_processed > 0;
	if (!*found)
		return (Datum) 0;
	desc = SPI_tuptable->tupdesc;
	tup = SPI_tuptable->vals[0];
	*ended = DatumGetBool(value_not_null(tup, desc, column(desc, "ended")));
	*xmin = DatumGetTransactionId(value_not_null(tup, desc, column(desc, "xmin")));
	return value_not_null(tup, desc, column(desc, "row"));
}

static Statement pause_stmt = {
	.what = "pausing a queue", .expect = SPI_OK_INSERT,
	.nargs = 1, .types = {TEXTOID},
	.sql = "INSERT INTO taskq.queues (name, paused, paused_at)"
	" VALUES ($1, true, pg_catalog.now())"
	" ON CONFLICT (name) DO UPDATE SET paused = true,"
	" paused_at = COALESCE(taskq.queues.paused_at, pg_catalog.now())"
};

static Statement resume_stmt = {
	.what = "resuming a queue", .expect = SPI_OK_UPDATE,
	.nargs = 1, .types = {TEXTOID},
	.sql = "UPDATE taskq.queues SET paused = false, paused_at = NULL"
	" WHERE name OPERATOR(pg_catalog.=) $1"
};

/* Mark a queue paused (since the first pause) or not. */
void
taskq_outbox_set_paused(const char *queue, bool paused)
{
	Datum		values[1] = {CStringGetTextDatum(queue)};

	run(paused ? &pause_stmt : &resume_stmt, values, NULL, 0);
}

#define INSERT_SQL \
	"INSERT INTO taskq.tasks (handler, queue, priority, status, payload, metadata," \
	" run_at, expires_at, max_attempts, timeout, owner, dedupe_key, group_key, external)" \
	" VALUES ($1, $2, $3, $4::taskq.status, $5, $6, $7, $8, $9, $10, $11::pg_catalog.regrole, $12, $13, $14)"
#define INSERT_TYPES \
	{TEXTOID, TEXTOID, INT4OID, TEXTOID, JSONBOID, JSONBOID, \
	 TIMESTAMPTZOID, TIMESTAMPTZOID, INT4OID, INTERVALOID, OIDOID, TEXTOID, TEXTOID, BOOLOID}

static Statement insert_stmt = {
	.what = "inserting a task", .expect = SPI_OK_INSERT_RETURNING,
	.nargs = 14, .types = INSERT_TYPES,
	.sql = INSERT_SQL " RETURNING id"
};

/*
 * With a dedupe key the insert does nothing when a live task of the same
 * role holds the key.  The ON CONFLICT names tasks_dedupe_idx by its
 * columns and predicate, so that only that index gives way: a conflict on
 * any other unique index (the primary key, with the sequence set back)
 * is an error, not a row silently left out.
 */
static Statement insert_dedupe_stmt = {
	.what = "inserting a task", .expect = SPI_OK_INSERT_RETURNING,
	.nargs = 14, .types = INSERT_TYPES,
	.sql = INSERT_SQL
	" ON CONFLICT (handler, dedupe_key, owner)"
	" WHERE dedupe_key IS NOT NULL AND status " TASKQ_SQL_LIVE
	" DO NOTHING RETURNING id"
};

/* An interval datum of ms milliseconds. */
static Datum
interval_of_ms(int64 ms)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = ms * 1000;
	return IntervalPGetDatum(iv);
}

/*
 * Write one task; returns its id, or 0 when it has a dedupe key that a
 * live task of its owner holds (then nothing is written: see
 * taskq_outbox_live_holder for which task).
 */
int64
taskq_outbox_insert(const TaskqNewTask *t)
{
	Datum		values[14];
	char		nulls[14];
	TupleDesc	desc;
	int64		id;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(t->handler);
	values[1] = CStringGetTextDatum(t->queue);
	values[2] = Int32GetDatum(t->priority);
	values[3] = CStringGetTextDatum(t->status);
	values[4] = JsonbPGetDatum(t->payload);
	values[5] = t->metadata ? JsonbPGetDatum(t->metadata) : (Datum) 0;
	nulls[5] = t->metadata ? ' ' : 'n';
	values[6] = TimestampTzGetDatum(t->run_at);
	values[7] = TimestampTzGetDatum(t->expires_at);
	nulls[7] = t->has_expires_at ? ' ' : 'n';
	values[8] = Int32GetDatum(t->max_attempts);
	values[9] = interval_of_ms(t->timeout_ms);
	values[10] = ObjectIdGetDatum(t->owner);
	values[11] = t->dedupe_key ? PointerGetDatum(t->dedupe_key) : (Datum) 0;
	nulls[11] = t->dedupe_key ? ' ' : 'n';
	values[12] = t->group_key ? PointerGetDatum(t->group_key) : (Datum) 0;
	nulls[12] = t->group_key ? ' ' : 'n';
	values[13] = BoolGetDatum(t->external);

	run(t->dedupe_key ? &insert_dedupe_stmt : &insert_stmt, values, nulls, 1);
	desc = SPI_tuptable->tupdesc;
	id = SPI_processed == 0 ? 0 :
		DatumGetInt64(value_not_null(SPI_tuptable->vals[0], desc, column(desc, "id")));
	/* enqueue_many() inserts many rows under one SPI connection */
	SPI_freetuptable(SPI_tuptable);
	return id;
}

static Statement grouped_stmt = {
	.what = "reading a queue", .expect = SPI_OK_SELECT,
	.nargs = 1, .types = {TEXTOID},
	.sql = "SELECT FROM taskq.queues WHERE name OPERATOR(pg_catalog.=) $1 AND grouped"
};

static Statement mark_grouped_stmt = {
	.what = "marking a queue grouped", .expect = SPI_OK_INSERT,
	.nargs = 1, .types = {TEXTOID},
	.sql = "INSERT INTO taskq.queues (name, grouped) VALUES ($1, true)"
	" ON CONFLICT (name) DO UPDATE SET grouped = true"
};

/*
 * A queue that receives a task with a group_key is served round-robin
 * across group keys from then on (taskq.queues.grouped), by the claim of
 * limited queues; queues that never see one keep the plain claim.  Look
 * first (one primary key probe) and write only when the flag is not set
 * yet, so that concurrent enqueuers of a grouped queue do not queue up on
 * its row.  No session cache: a rolled-back enqueue takes its mark along.
 * Runs as the owner of taskq.tasks.
 */
void
taskq_outbox_mark_grouped(const char *queue)
{
	Datum		values[1] = {CStringGetTextDatum(queue)};

	run(&grouped_stmt, values, NULL, 1);
	if (SPI_processed == 0)
		run(&mark_grouped_stmt, values, NULL, 0);
}

static Statement finish_sync_stmt = {
	.what = "recording a sync outcome", .expect = SPI_OK_UPDATE,
	.nargs = 4, .types = {INT8OID, TEXTOID, JSONBOID, INT4OID},
	.sql = "UPDATE taskq.tasks SET status = $2::taskq.status, result = $3,"
	" attempts = 1, started_at = pg_catalog.now(),"
	" finished_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'completed' THEN pg_catalog.now() END,"
	" lease_until = CASE WHEN $2 OPERATOR(pg_catalog.=) 'dispatched'"
	"   THEN pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $4 OPERATOR(pg_catalog./) 1000.0) END"
	" WHERE id OPERATOR(pg_catalog.=) $1"
};

/*
 * Record the outcome of a sync-mode run on its row: 'completed' with its
 * result, or 'dispatched' with a lease of ack_timeout_ms.
 */
void
taskq_outbox_finish_sync(int64 id, const TaskqOutcome *out, int ack_timeout_ms)
{
	Datum		values[4] = {Int64GetDatum(id), CStringGetTextDatum(out->status),
	out->result, Int32GetDatum(ack_timeout_ms)};
	char		nulls[4] = {' ', ' ', out->result_null ? 'n' : ' ', ' '};

	run(&finish_sync_stmt, values, nulls, 0);
}

/*
 * Which of these tasks have ended or are gone (into ended; how many): the
 * suspects among them can no longer be charged and are forgotten.  A
 * 'running' or 'queued' one may still be, by a later reap.
 */
#define ENDED_SQL \
	"SELECT i FROM pg_catalog.unnest($1) i WHERE NOT EXISTS" \
	" (SELECT FROM taskq.tasks t WHERE t.id OPERATOR(pg_catalog.=) i" \
	"  AND t.status OPERATOR(pg_catalog.=) ANY ('{queued,running}'::taskq.status[]))"

int
taskq_outbox_ended(const int64 *ids, int n, int64 *ended)
{
	static SPIPlanPtr ended_plan = NULL;
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];
	bool		isnull;
	int			ret;
	uint64		i;

	for (i = 0; i < (uint64) n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	values[0] = PointerGetDatum(construct_array(elems, n, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	ret = SPI_execute_plan(taskq_prepare(&ended_plan, ENDED_SQL, 1, types), values, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "taskq: looking up suspects' tasks failed: %s", SPI_result_code_string(ret));
	for (i = 0; i < SPI_processed && i < (uint64) n; i++)
		ended[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	return (int) i;
}
