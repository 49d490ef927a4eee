/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  taskq.enqueue() and taskq.enqueue_many(): option resolution,
 *	  validation, policies, the outbox insert and the commit wake-up.
 *	  A logical handler's task goes to logical.c instead of the outbox.
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
	text	   *group_key;
	bool		has_expires_at;
	TimestampTz expires_at;
	int			mode;
	Jsonb	   *metadata;
	Oid			owner;			/* the calling role, read before any switch */
	bool		blocked;		/* taskq.block_handlers names the handler */
	TaskqDeps	deps;			/* after: the live parents (deps.c) */
} EnqueueOptions;

static bool warned_no_dispatch = false;
static bool warned_starved = false;
static uint32 starved_seen = 0;	/* the launcher's starved list we looked at */

/* ----------------------------------------------------------------
 * Resolution and validation
 * ----------------------------------------------------------------
 */

/* A text argument as a C string, or NULL: most options may be NULL. */
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

/*
 * dedupe_key: 1 to TASKQ_MAX_DEDUPE_KEY bytes; it goes into a unique
 * index, whose entries have a size limit of their own.
 */
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

/* metadata must be an object: taskq adds keys to it (schedule, scheduled_for). */
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
 * group_key, checked as schedule() checks it (common.c).  The empty
 * string is kept free for nothing: a key is either given or NULL.
 */
static void
check_group_key(FunctionCallInfo fcinfo, EnqueueOptions *o)
{
	/* a 0.1 database calls us with 12 arguments, until its update */
	o->group_key = PG_NARGS() <= 12 || PG_ARGISNULL(12) ? NULL : PG_GETARG_TEXT_PP(12);
	if (o->group_key != NULL)
		taskq_check_group_key(text_to_cstring(o->group_key));
}

static bool handler_blocked(const char *name);

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
	check_group_key(fcinfo, o);
	o->blocked = handler_blocked(handler_name);
	if (o->handler.kind == TASKQ_KIND_LOGICAL)
	{
		char	   *mode = text_arg(fcinfo, 10);

		taskq_logical_check_call(handler_name, !PG_ARGISNULL(3), !PG_ARGISNULL(4),
								 !PG_ARGISNULL(8), mode && strcmp(mode, "sync") == 0);
		o->mode = TASKQ_MODE_ASYNC; /* taskq.default_mode cannot apply */
	}
	taskq_deps_resolve(fcinfo, o->owner, o->mode == TASKQ_MODE_SYNC, &o->deps);
	if (o->handler.kind == TASKQ_KIND_LOGICAL && o->deps.given)
		taskq_logical_refuse_after(handler_name);
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

/* With taskq.trace on, one log line per enqueue, for debugging a flow. */
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

/*
 * Write one task, or find the live task it deduplicates into.  Returns its
 * id; *inserted says which.  Runs as the owner of taskq.tasks.
 *
 * With a dedupe key: insert unless a live task of the same role holds the
 * key, else return that task.  The key is the role's own (the unique index
 * is on handler, dedupe_key and owner), so no role can suppress another's
 * tasks or learn their ids.  A concurrent enqueue of the same key by the
 * same role waits for our commit on the unique index, then finds our row.
 * The holder may end between the two statements; then try again.
 */
static int64
insert_task(const EnqueueOptions *o, Jsonb *payload, const char *status, bool *inserted)
{
	TaskqNewTask t;
	int			tries;
	int64		id;

	t.handler = o->handler.name;
	t.queue = o->queue;
	t.priority = o->priority;
	t.status = status;
	t.payload = payload;
	t.metadata = o->metadata;
	t.run_at = o->run_at;
	t.has_expires_at = o->has_expires_at;
	t.expires_at = o->expires_at;
	t.max_attempts = o->max_attempts;
	t.timeout_ms = o->timeout_ms;
	t.owner = o->owner;
	t.dedupe_key = o->dedupe_key;
	t.group_key = o->group_key;
	t.external = o->handler.kind == TASKQ_KIND_EXTERNAL;

	*inserted = true;
	for (tries = 0; tries < 3; tries++)
	{
		if ((id = taskq_outbox_insert(&t)) != 0)
			return id;
		if ((id = taskq_outbox_live_holder(t.handler, t.dedupe_key, t.owner)) != 0)
		{
			*inserted = false;
			return id;
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
 * A logical handler's task: a message in this transaction instead of a
 * row (logical.c), so nothing to wake at commit.
 */
static int64
enqueue_logical(const EnqueueOptions *o, Jsonb *payload)
{
	TaskqTask	task;
	int64		id;

	memset(&task, 0, sizeof(task));
	task.handler = (char *) o->handler.name;
	task.queue = (char *) o->queue;
	task.priority = o->priority;
	task.max_attempts = o->max_attempts;
	task.timeout_ms = o->timeout_ms;
	task.owner = o->owner;
	task.run_at = o->run_at;
	task.payload = JsonbPGetDatum(payload);
	task.metadata = o->metadata ? JsonbPGetDatum(o->metadata) : (Datum) 0;
	id = taskq_logical_emit(&o->handler, &task, o->has_expires_at ? &o->expires_at : NULL);
	trace_enqueue(o, "emitted", id);
	return id;
}

/*
 * Whether the dispatchers' plain claim reads a task enqueued so (and its
 * commit must rewind their cursors of its queue to it): a queued one of a
 * handler they run.  An external task is claimed by taskq.claim(), a
 * waiting one is released later, and a grouped one is claimed through its
 * queue's own claim, which keeps no cursor.
 */
static bool
claimed_from_queue(const EnqueueOptions *o, const char *status)
{
	return strcmp(status, "queued") == 0 && o->group_key == NULL &&
		o->handler.kind != TASKQ_KIND_EXTERNAL;
}

/*
 * Enqueue one payload with resolved options.  Returns the task id, or
 * -1 when a policy dropped it.  The caller has SPI connected, and with
 * owner_held already acts as the owner of taskq.tasks (enqueue_many() in
 * async mode switches once for all its payloads).
 */
static int64
enqueue_one(EnqueueOptions *o, Jsonb *payload, bool owner_held)
{
	TaskqAsOwner save;
	const char *status;
	bool		inserted;
	int64		id;

	if (taskq_policy == TASKQ_POLICY_ASSERT_NONE)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("taskq.enqueue() called for handler \"%s\" while taskq.policy is assert_none",
						o->handler.name),
				 errdetail("This code path was asserted to have no side effects.")));
	if (taskq_policy == TASKQ_POLICY_DROP || o->blocked)
	{
		trace_enqueue(o, taskq_policy == TASKQ_POLICY_DROP ? "dropped (policy)" : "dropped (blocked)", 0);
		return -1;
	}
	if (taskq_kind_ops(o->handler.kind)->check_task != NULL)
		taskq_kind_ops(o->handler.kind)->check_task(&o->handler, payload, o->metadata);
	if (o->handler.kind == TASKQ_KIND_LOGICAL)
		return enqueue_logical(o, payload);

	if (o->mode == TASKQ_MODE_ASYNC)
	{
		if (!owner_held)
			taskq_become_owner(&save);
		status = taskq_deps_status(&o->deps);
		id = insert_task(o, payload, status, &inserted);
		if (inserted && o->group_key != NULL)
			taskq_outbox_mark_grouped(o->queue);
		if (!owner_held)
			taskq_restore_user(&save);
		if (inserted)
		{
			taskq_deps_link(&o->deps, id);
			taskq_request_claimable_at_commit(claimed_from_queue(o, status) ? o->queue : NULL,
											  o->priority, o->run_at);
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
	Assert(!owner_held);
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
		taskq_outbox_finish_sync(id, &out, taskq_ack_timeout);
		taskq_restore_user(&save);
		if (strcmp(out.status, "completed") == 0)
			taskq_count_outcome(MyDatabaseId, o->queue, o->handler.name, 1, 0, 0);
		trace_enqueue(o, out.status, id);
	}
	return id;
}

/*
 * The handler name argument, refused when NULL: enqueue() is not strict,
 * so that its other NULL arguments mean "the default".
 */
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
 *				 max_attempts, timeout, dedupe_key, expires_at, mode, metadata,
 *				 group_key)
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
	id = enqueue_one(&o, payload, false);
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
	TaskqAsOwner save;
	bool		owner_held;

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
	owner_held = o.mode == TASKQ_MODE_ASYNC;
	if (owner_held)
		taskq_become_owner(&save);
	for (i = 0; i < n; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(row_ctx);
		int64		id = enqueue_one(&o, DatumGetJsonbP(elems[i]), owner_held);
		Datum		value = Int64GetDatum(id);
		bool		isnull = id < 0;

		MemoryContextSwitchTo(old);
		tuplestore_putvalues(store, desc, &value, &isnull);
		MemoryContextReset(row_ctx);
	}
	if (owner_held)
		taskq_restore_user(&save);
	SPI_finish();
	return (Datum) 0;
}
