/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  taskq.enqueue() and taskq.enqueue_many(): option resolution,
 *	  validation, policies, the outbox insert and the commit wake-up.
 *
 * Every option resolves, first match wins: the call's argument, the
 * handler's registration, the taskq.default_* GUC (whose boot value is the
 * built-in fallback).  All validation happens before anything is written,
 * so a refused call leaves no row behind.
 *
 * The insert runs as the owner of taskq.tasks: application roles have no
 * INSERT privilege on the outbox, so the only way in is through here, and
 * the row's owner is always the calling role.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

PG_FUNCTION_INFO_V1(taskq_enqueue);
PG_FUNCTION_INFO_V1(taskq_enqueue_many);

#define TASKQ_MAX_PAYLOAD		(64 * 1024 * 1024)
#define TASKQ_MAX_DEDUPE_KEY	512

/* The options of one enqueue call, as given (null flags) and resolved. */
typedef struct EnqueueOptions
{
	TaskqHandler handler;
	int			priority;
	TimestampTz run_at;
	int64		delay_ms;
	char		queue[TASKQ_NAME_MAXLEN + 1];
	int			max_attempts;
	int64		timeout_ms;
	text	   *dedupe_key;
	bool		has_expires_at;
	TimestampTz expires_at;
	int			mode;
	Jsonb	   *metadata;
	Oid			owner;			/* the calling role, read before any switch */
	TaskqDeps	deps;			/* after: the live parents (deps.c) */
} EnqueueOptions;

static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr insert_dedupe_plan = NULL;
static SPIPlanPtr find_dedupe_plan = NULL;
static SPIPlanPtr finish_sync_plan = NULL;
static bool warned_no_dispatch = false;
static bool warned_starved = false;
static uint32 starved_seen = 0;	/* the launcher's starved list we looked at */

static Interval *
ms_to_interval(int64 ms)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = ms * 1000;
	return iv;
}

/* ----------------------------------------------------------------
 * Resolution and validation
 * ----------------------------------------------------------------
 */

static char *
text_arg(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/* priority: the argument, else the handler's, else the GUC's. */
static void
resolve_priority(FunctionCallInfo fcinfo, EnqueueOptions *o)
{
	const TaskqHandler *h = &o->handler;

	if (PG_ARGISNULL(2))
		o->priority = h->has_priority ? h->priority : taskq_default_priority;
	else
		o->priority = taskq_check_priority(PG_GETARG_INT32(2));
}

/*
 * When the task may first run: now (the transaction's start, so that a
 * transaction's tasks keep their order), after run_after, or at run_at.
 * delay_ms is what taskq.trace reports.
 */
static void
resolve_run_at(FunctionCallInfo fcinfo, EnqueueOptions *o)
{
	o->delay_ms = 0;
	o->run_at = GetCurrentTransactionStartTimestamp();
	if (!PG_ARGISNULL(3) && !PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("run_after and run_at cannot both be given"),
				 errhint("Use run_after for a delay from now, or run_at for an absolute time.")));
	if (!PG_ARGISNULL(3))
	{
		o->delay_ms = taskq_interval_ms("run_after", PG_GETARG_INTERVAL_P(3), true);
		o->run_at = TimestampTzPlusMilliseconds(o->run_at, o->delay_ms);
	}
	else if (!PG_ARGISNULL(4))
	{
		TimestampTz at = PG_GETARG_TIMESTAMPTZ(4);

		if (TIMESTAMP_NOT_FINITE(at))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("run_at must be a finite time, not %s",
							TIMESTAMP_IS_NOBEGIN(at) ? "-infinity" : "infinity"),
					 errhint("Leave run_at NULL to run as soon as possible.")));
		if (at > o->run_at)
		{
			o->delay_ms = (at - o->run_at) / 1000;
			o->run_at = at;
		}
	}
}

/* queue, max_attempts and timeout: argument, handler, GUC, as priority. */
static void
resolve_queue_and_limits(FunctionCallInfo fcinfo, EnqueueOptions *o)
{
	const TaskqHandler *h = &o->handler;
	const char *queue = text_arg(fcinfo, 5);

	if (queue != NULL)
		taskq_check_name("queue", queue);
	else
		queue = h->queue[0] ? h->queue : taskq_default_queue;
	strlcpy(o->queue, queue, sizeof(o->queue));

	if (PG_ARGISNULL(6))
		o->max_attempts = h->has_max_attempts ? h->max_attempts : taskq_default_max_attempts;
	else
		o->max_attempts = taskq_check_max_attempts(PG_GETARG_INT32(6));

	if (PG_ARGISNULL(7))
		o->timeout_ms = h->has_timeout ? h->timeout_ms : taskq_default_timeout;
	else
		o->timeout_ms = taskq_interval_ms("timeout", PG_GETARG_INTERVAL_P(7), false);
	taskq_check_timeout_ms(o->timeout_ms);
}

static void
check_dedupe_key(FunctionCallInfo fcinfo, EnqueueOptions *o)
{
	size_t		len;

	o->dedupe_key = PG_ARGISNULL(8) ? NULL : PG_GETARG_TEXT_PP(8);
	if (o->dedupe_key == NULL)
		return;
	len = VARSIZE_ANY_EXHDR(o->dedupe_key);
	if (len == 0 || len > TASKQ_MAX_DEDUPE_KEY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("dedupe_key must be 1 to %d bytes long; this one is %zu",
						TASKQ_MAX_DEDUPE_KEY, len),
				 errhint("Use a short business key, such as 'order-42'.")));
}

/*
 * expires_at: 'infinity' means never; otherwise it must come after the
 * task's run_at, or the task could only ever expire.
 */
static void
resolve_expires_at(FunctionCallInfo fcinfo, EnqueueOptions *o)
{
	o->has_expires_at = !PG_ARGISNULL(9);
	if (!o->has_expires_at)
		return;
	o->expires_at = PG_GETARG_TIMESTAMPTZ(9);
	if (TIMESTAMP_IS_NOBEGIN(o->expires_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("expires_at must not be -infinity"),
				 errhint("Leave expires_at NULL (or 'infinity') for a task that never expires.")));
	if (TIMESTAMP_IS_NOEND(o->expires_at))
		o->has_expires_at = false;	/* never expires */
	else if (o->expires_at <= o->run_at)
	{
		/* timestamptz_to_str() returns a static buffer: copy each */
		char	   *expires = pstrdup(timestamptz_to_str(o->expires_at));
		char	   *runs = pstrdup(timestamptz_to_str(o->run_at));

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("expires_at %s is not after the time the task would run, %s",
						expires, runs),
				 errhint("Give a later expires_at, or none.")));
	}
}

/* mode: the argument, else taskq.default_mode; taskq.require_enqueue wins. */
static void
resolve_mode(FunctionCallInfo fcinfo, EnqueueOptions *o)
{
	char	   *mode = text_arg(fcinfo, 10);

	if (mode == NULL)
		o->mode = taskq_default_mode;
	else if (strcmp(mode, "async") == 0)
		o->mode = TASKQ_MODE_ASYNC;
	else if (strcmp(mode, "sync") == 0)
		o->mode = TASKQ_MODE_SYNC;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown mode \"%s\"", mode),
				 errhint("Use 'async' (dispatch after commit) or 'sync' (run now, in this transaction).")));
	if (taskq_require_enqueue)
		o->mode = TASKQ_MODE_ASYNC;
}

static void
check_metadata(FunctionCallInfo fcinfo, EnqueueOptions *o)
{
	o->metadata = PG_ARGISNULL(11) ? NULL : PG_GETARG_JSONB_P(11);
	if (o->metadata != NULL && !JB_ROOT_IS_OBJECT(o->metadata))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metadata must be a JSON object"),
				 errhint("For example '{\"trace_id\": \"abc\"}'.")));
}

/*
 * Resolve and check every option of an enqueue call, in argument order,
 * so the first bad one is the one reported.  Arguments 0 and 1 (handler,
 * payload) are validated by the callers; the rest are shared by enqueue()
 * and enqueue_many() and start at argument 2.
 */
static void
resolve_options(FunctionCallInfo fcinfo, const char *handler_name, EnqueueOptions *o)
{
	o->owner = taskq_caller();
	if (!taskq_lookup_handler_locked(handler_name, &o->handler))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("handler \"%s\" is not registered", handler_name),
				 errhint("Register it with taskq.register_handler(), or see taskq.handlers for the registered ones.")));
	resolve_priority(fcinfo, o);
	resolve_run_at(fcinfo, o);
	resolve_queue_and_limits(fcinfo, o);
	check_dedupe_key(fcinfo, o);
	resolve_expires_at(fcinfo, o);
	resolve_mode(fcinfo, o);
	check_metadata(fcinfo, o);
	taskq_deps_resolve(fcinfo, o->owner, o->mode == TASKQ_MODE_SYNC, &o->deps);
}

/* index: 1-based position in enqueue_many's array, 0 for enqueue() */
static Jsonb *
check_payload(Datum d, int64 index)
{
	Jsonb	   *payload = DatumGetJsonbP(d);
	Size		size = VARSIZE(payload);

	if (size > TASKQ_MAX_PAYLOAD)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 index > 0 ?
				 errmsg("payloads[" INT64_FORMAT "] is too large: %zu bytes", index, size) :
				 errmsg("payload is too large: %zu bytes", size),
				 errdetail("A task's payload is limited to %d MB.", TASKQ_MAX_PAYLOAD / (1024 * 1024)),
				 errhint("Store large data in a table and enqueue its key.")));
	return payload;
}

/* Whether taskq.block_handlers names this handler. */
static bool
handler_blocked(const char *name)
{
	char	   *raw;
	List	   *names;
	ListCell   *lc;
	bool		blocked = false;

	if (taskq_block_handlers == NULL || taskq_block_handlers[0] == '\0')
		return false;
	raw = pstrdup(taskq_block_handlers);
	if (!SplitGUCList(raw, ',', &names))
		return false;
	foreach(lc, names)
	{
		if (strcmp((char *) lfirst(lc), name) == 0)
			blocked = true;
	}
	list_free(names);
	pfree(raw);
	return blocked;
}

/*
 * Warn once per session when nothing will dispatch what this session
 * enqueues: taskq not preloaded, or this database not in taskq.databases.
 */
static void
warn_if_nothing_dispatches(void)
{
	char	   *raw;
	List	   *names;
	ListCell   *lc;
	bool		listed = false;
	const char *dbname;

	if (warned_no_dispatch)
		return;
	warned_no_dispatch = true;
	if (!taskq_preloaded)
	{
		ereport(WARNING,
				(errmsg("taskq is not loaded through shared_preload_libraries; tasks are recorded but nothing will dispatch them"),
				 errhint("Add taskq to shared_preload_libraries in postgresql.conf and restart the server.")));
		return;
	}
	dbname = get_database_name(MyDatabaseId);
	raw = pstrdup(taskq_databases ? taskq_databases : "");
	if (SplitGUCList(raw, ',', &names))
	{
		foreach(lc, names)
		{
			if (dbname && strcmp((char *) lfirst(lc), dbname) == 0)
				listed = true;
		}
	}
	if (!listed)
		ereport(WARNING,
				(errmsg("no taskq dispatcher runs in database \"%s\"; tasks are recorded but nothing will dispatch them",
						dbname ? dbname : "?"),
				 errhint("Add the database to taskq.databases in postgresql.conf and reload.")));
}

/*
 * Warn once per session when this database is in taskq.databases but no
 * dispatcher runs there because no background worker slot was free.  The
 * launcher publishes that; we read one atomic per call, and the list only
 * when it changed.
 */
static void
warn_if_no_dispatcher_started(void)
{
	if (warned_starved || !taskq_database_starved(MyDatabaseId, &starved_seen))
		return;
	warned_starved = true;
	ereport(WARNING,
			(errmsg("no taskq dispatcher runs in database \"%s\": no background worker slot is free; tasks are recorded and wait",
					get_database_name(MyDatabaseId)),
			 errhint("Raise max_worker_processes (the server log says how far) and restart; the dispatchers start as soon as slots free up.")));
}

static void
trace_enqueue(const EnqueueOptions *o, const char *outcome, int64 id)
{
	if (!taskq_trace)
		return;
	ereport(LOG,
			(errmsg("taskq: enqueue handler=%s kind=%s queue=%s mode=%s delay=" INT64_FORMAT "ms priority=%d outcome=%s id=" INT64_FORMAT,
					o->handler.name, taskq_kind_name(o->handler.kind), o->queue,
					taskq_mode_name(o->mode), o->delay_ms, o->priority, outcome, id),
			 errhidestmt(true)));
}

/* ----------------------------------------------------------------
 * The insert
 * ----------------------------------------------------------------
 */

/* The id in the first row of the last result, which is then freed. */
static int64
first_id(void)
{
	bool		isnull;
	int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	SPI_freetuptable(SPI_tuptable);
	return id;
}

/*
 * Write one task, or find the live task it deduplicates into.  Returns its
 * id; *inserted says which.  Runs as the owner of taskq.tasks.
 */
static int64
insert_task(const EnqueueOptions *o, Jsonb *payload, const char *status, bool *inserted)
{
	Oid			types[12] = {TEXTOID, TEXTOID, INT4OID, TEXTOID, JSONBOID, JSONBOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, INT4OID, INTERVALOID, OIDOID, TEXTOID};
	Datum		values[12];
	char		nulls[12];
	SPIPlanPtr	plan;
	int			tries;
	int			ret;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(o->handler.name);
	values[1] = CStringGetTextDatum(o->queue);
	values[2] = Int32GetDatum(o->priority);
	values[3] = CStringGetTextDatum(status);
	values[4] = JsonbPGetDatum(payload);
	values[5] = o->metadata ? JsonbPGetDatum(o->metadata) : (Datum) 0;
	nulls[5] = o->metadata ? ' ' : 'n';
	values[6] = TimestampTzGetDatum(o->run_at);
	values[7] = TimestampTzGetDatum(o->expires_at);
	nulls[7] = o->has_expires_at ? ' ' : 'n';
	values[8] = Int32GetDatum(o->max_attempts);
	values[9] = IntervalPGetDatum(ms_to_interval(o->timeout_ms));
	values[10] = ObjectIdGetDatum(o->owner);
	values[11] = o->dedupe_key ? PointerGetDatum(o->dedupe_key) : (Datum) 0;
	nulls[11] = o->dedupe_key ? ' ' : 'n';

#define INSERT_SQL \
	"INSERT INTO taskq.tasks (handler, queue, priority, status, payload, metadata," \
	" run_at, expires_at, max_attempts, timeout, owner, dedupe_key)" \
	" VALUES ($1, $2, $3, $4::taskq.status, $5, $6, $7, $8, $9, $10, $11::pg_catalog.regrole, $12)"

	if (o->dedupe_key == NULL)
	{
		plan = taskq_prepare(&insert_plan, INSERT_SQL " RETURNING id", 12, types);
		ret = SPI_execute_plan(plan, values, nulls, false, 1);
		if (ret != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
			elog(ERROR, "taskq: insert into taskq.tasks failed: %s", SPI_result_code_string(ret));
		*inserted = true;
		return first_id();
	}

	/*
	 * With a dedupe key: insert unless a live task of the same role holds
	 * the key, else return that task.  The key is the role's own (the
	 * unique index is on handler, dedupe_key and owner), so no role can
	 * suppress another's tasks or learn their ids.  A concurrent enqueue of
	 * the same key by the same role waits for our commit on the unique
	 * index, then finds our row.  The holder may end between the two
	 * statements; then try again.
	 *
	 * The ON CONFLICT names no index: the only unique index an insert can
	 * conflict with is tasks_dedupe_idx (ids come from the sequence), so
	 * the statement does not repeat that index's definition.
	 */
	for (tries = 0; tries < 3; tries++)
	{
		Oid			ftypes[3] = {TEXTOID, TEXTOID, OIDOID};
		Datum		fvalues[3] = {values[0], values[11], values[10]};

		plan = taskq_prepare(&insert_dedupe_plan,
							 INSERT_SQL
							 " ON CONFLICT DO NOTHING RETURNING id", 12, types);
		ret = SPI_execute_plan(plan, values, nulls, false, 1);
		if (ret != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "taskq: insert into taskq.tasks failed: %s", SPI_result_code_string(ret));
		if (SPI_processed == 1)
		{
			*inserted = true;
			return first_id();
		}
		plan = taskq_prepare(&find_dedupe_plan,
							 "SELECT id FROM taskq.tasks"
							 " WHERE handler OPERATOR(pg_catalog.=) $1"
							 " AND dedupe_key OPERATOR(pg_catalog.=) $2"
							 " AND owner::pg_catalog.oid OPERATOR(pg_catalog.=) $3"
							 " AND dedupe_key IS NOT NULL"
							 " AND status " TASKQ_SQL_LIVE,
							 3, ftypes);
		ret = SPI_execute_plan(plan, fvalues, NULL, false, 1);
		if (ret == SPI_OK_SELECT && SPI_processed == 1)
		{
			*inserted = false;
			return first_id();
		}
	}
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not enqueue a task with dedupe_key \"%s\" for handler \"%s\": the live task keeps changing",
					text_to_cstring(o->dedupe_key), o->handler.name),
			 errhint("Retry the transaction.")));
	return 0;					/* keep compiler quiet */
}

/*
 * Record the outcome of a sync-mode run on its row.
 */
static void
finish_sync(int64 id, const TaskqOutcome *out)
{
	Oid			types[4] = {INT8OID, TEXTOID, JSONBOID, INT4OID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	SPIPlanPtr	plan;

	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(out->status);
	values[2] = out->result;
	nulls[2] = out->result_null ? 'n' : ' ';
	values[3] = Int32GetDatum(taskq_ack_timeout);
	plan = taskq_prepare(&finish_sync_plan,
						 "UPDATE taskq.tasks SET status = $2::taskq.status, result = $3,"
						 " attempts = 1, started_at = pg_catalog.now(),"
						 " finished_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'completed' THEN pg_catalog.now() END,"
						 " lease_until = CASE WHEN $2 OPERATOR(pg_catalog.=) 'dispatched'"
						 "   THEN pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $4 OPERATOR(pg_catalog./) 1000.0) END"
						 " WHERE id OPERATOR(pg_catalog.=) $1",
						 4, types);
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "taskq: could not record the sync outcome of task " INT64_FORMAT, id);
}

/*
 * Enqueue one payload with resolved options.  Returns the task id, or
 * -1 when a policy dropped it.  The caller has SPI connected.
 */
static int64
enqueue_one(EnqueueOptions *o, Jsonb *payload)
{
	TaskqAsOwner save;
	bool		inserted;
	int64		id;

	if (taskq_policy == TASKQ_POLICY_ASSERT_NONE)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("taskq.enqueue() called for handler \"%s\" while taskq.policy is assert_none",
						o->handler.name),
				 errdetail("This code path was asserted to have no side effects.")));
	if (taskq_policy == TASKQ_POLICY_DROP || handler_blocked(o->handler.name))
	{
		trace_enqueue(o, taskq_policy == TASKQ_POLICY_DROP ? "dropped (policy)" : "dropped (blocked)", 0);
		return -1;
	}
	if (taskq_kind_ops(o->handler.kind)->check_task != NULL)
		taskq_kind_ops(o->handler.kind)->check_task(&o->handler, payload, o->metadata);

	if (o->mode == TASKQ_MODE_ASYNC)
	{
		taskq_become_owner(&save);
		id = insert_task(o, payload, taskq_deps_status(&o->deps), &inserted);
		taskq_restore_user(&save);
		if (inserted)
		{
			taskq_deps_link(&o->deps, id);
			taskq_request_wakeup_at_commit(1);
			warn_if_nothing_dispatches();
			warn_if_no_dispatcher_started();
		}
		trace_enqueue(o, inserted ? "queued" : "deduplicated", id);
		return id;
	}

	/*
	 * Sync: write the row as running, run the handler here, as the caller,
	 * and record its outcome.  An error rolls all three back together.
	 */
	if (!o->handler.enabled)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("handler \"%s\" is disabled", o->handler.name),
				 errhint("Enable it with taskq.register_handler(..., enabled => true), or enqueue with mode => 'async' to keep the task until then.")));
	{
		TaskqTask	task;
		TaskqOutcome out;

		taskq_become_owner(&save);
		id = insert_task(o, payload, "running", &inserted);
		taskq_restore_user(&save);
		if (!inserted)
		{
			trace_enqueue(o, "deduplicated", id);
			return id;
		}
		memset(&task, 0, sizeof(task));
		task.id = id;
		task.handler = o->handler.name;
		task.queue = o->queue;
		task.priority = o->priority;
		task.attempts = 0;
		task.max_attempts = o->max_attempts;
		task.timeout_ms = o->timeout_ms;
		task.owner = o->owner;
		task.payload = JsonbPGetDatum(payload);
		task.metadata = o->metadata ? JsonbPGetDatum(o->metadata) : (Datum) 0;
		taskq_execute(&task, &o->handler, true, &out);
		taskq_become_owner(&save);
		finish_sync(id, &out);
		taskq_restore_user(&save);
		if (strcmp(out.status, "completed") == 0)
			taskq_count_outcome(MyDatabaseId, o->queue, o->handler.name, 1, 0, 0);
		trace_enqueue(o, out.status, id);
	}
	return id;
}

static char *
handler_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("handler must not be NULL"),
				 errhint("Pass the name of a registered handler.")));
	return text_to_cstring(PG_GETARG_TEXT_PP(0));
}

/*
 * taskq.enqueue(handler, payload, priority, run_after, run_at, queue,
 *				 max_attempts, timeout, dedupe_key, expires_at, mode, metadata)
 */
Datum
taskq_enqueue(PG_FUNCTION_ARGS)
{
	char	   *name = handler_arg(fcinfo);
	EnqueueOptions o;
	Jsonb	   *payload;
	int64		id;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("payload must not be NULL"),
				 errhint("Pass '{}' for a task without a payload.")));
	payload = check_payload(PG_GETARG_DATUM(1), 0);

	SPI_connect();
	resolve_options(fcinfo, name, &o);
	id = enqueue_one(&o, payload);
	SPI_finish();

	if (id < 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(id);
}

/*
 * taskq.enqueue_many(handler, payloads jsonb[], <enqueue's options>):
 * one task per payload, ids returned in payload order (NULL where a
 * policy dropped the task).
 */
Datum
taskq_enqueue_many(PG_FUNCTION_ARGS)
{
	char	   *name = handler_arg(fcinfo);
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			n,
				i;
	EnqueueOptions o;
	Tuplestorestate *store;
	TupleDesc	desc;
	MemoryContext row_ctx;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("payloads must not be NULL"),
				 errhint("Pass an array of jsonb values, one per task.")));
	arr = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("payloads must be a one-dimensional array"),
				 errhint("Pass ARRAY['{...}'::jsonb, ...], one element per task.")));
	deconstruct_array(arr, JSONBOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &n);
	for (i = 0; i < n; i++)
	{
		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("payloads[%d] is NULL", i + 1),
					 errhint("Pass '{}' for a task without a payload.")));
		(void) check_payload(elems[i], i + 1);
	}
	if (!PG_ARGISNULL(8) && n > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("dedupe_key cannot be shared by %d payloads", n),
				 errhint("Call taskq.enqueue() once per task with its own dedupe_key.")));

	taskq_materialize(fcinfo, &store, &desc);
	SPI_connect();
	resolve_options(fcinfo, name, &o);
	row_ctx = AllocSetContextCreate(CurrentMemoryContext, "taskq enqueue_many row",
									ALLOCSET_DEFAULT_SIZES);
	for (i = 0; i < n; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(row_ctx);
		int64		id = enqueue_one(&o, DatumGetJsonbP(elems[i]));
		Datum		value = Int64GetDatum(id);
		bool		isnull = id < 0;

		MemoryContextSwitchTo(old);
		tuplestore_putvalues(store, desc, &value, &isnull);
		MemoryContextReset(row_ctx);
	}
	SPI_finish();
	return (Datum) 0;
}
