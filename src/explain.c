/*-------------------------------------------------------------------------
 *
 * explain.c
 *	  taskq.explain(id): why a task is not running now, in one sentence.
 *
 * The task is looked up as the caller, under the row-level security of
 * taskq.tasks, so a task of another role reads exactly as one that is not
 * committed yet.  What holds a visible task back is then read as the
 * owner: the queue's limits count every role's running tasks (numbers
 * only, never their ids or payloads).
 *
 * The reasons are tried from the task's own to the server's: its status,
 * a later run_at, its queue paused, its handler disabled, the queue's and
 * its group's concurrency and rate limits, then taskq.enabled and whether
 * a dispatcher runs in this database at all.
 *
 * It calls common.c and shmem.c only.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(taskq_explain);

static SPIPlanPtr visible_plan = NULL;
static SPIPlanPtr facts_plan = NULL;

/*
 * Everything explain() looks at, in one statement.  rate_at and
 * group_rate_at are when the bucket next holds a token, NULL when it
 * holds one now (or there is no such limit).
 */
#define FACTS_SQL \
	"SELECT t.status::pg_catalog.text AS status, t.run_at, t.worker_pid, t.started_at," \
	" t.finished_at, t.lease_until, t.queue, t.handler, t.group_key," \
	" t.run_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp() AS later," \
	" COALESCE(q.paused, false) AS paused, COALESCE(h.enabled, true) AS enabled," \
	" q.concurrency, q.group_concurrency, q.rate_limit, q.group_rate_limit," \
	" (SELECT pg_catalog.count(*)::pg_catalog.int4 FROM taskq.tasks r" \
	"   WHERE r.queue OPERATOR(pg_catalog.=) t.queue AND r.limited" \
	"   AND r.status OPERATOR(pg_catalog.=) ANY ('{running,dispatched}'::taskq.status[])) AS running," \
	" (SELECT pg_catalog.count(*)::pg_catalog.int4 FROM taskq.tasks r" \
	"   WHERE r.queue OPERATOR(pg_catalog.=) t.queue AND r.group_key IS NOT DISTINCT FROM t.group_key" \
	"   AND r.limited AND r.status OPERATOR(pg_catalog.=) ANY ('{running,dispatched}'::taskq.status[])) AS group_running," \
	" (SELECT pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs =>" \
	"    (1 OPERATOR(pg_catalog.-) x.tok) OPERATOR(pg_catalog.*) pg_catalog.date_part('epoch', q.rate_period)" \
	"    OPERATOR(pg_catalog./) q.rate_count)" \
	"   FROM (SELECT taskq._bucket(q.tokens, q.refilled_at, q.rate_count, q.rate_period," \
	"                pg_catalog.clock_timestamp()) AS tok) x" \
	"   WHERE x.tok OPERATOR(pg_catalog.<) 1) AS rate_at," \
	" (SELECT pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs =>" \
	"    (1 OPERATOR(pg_catalog.-) x.tok) OPERATOR(pg_catalog.*) pg_catalog.date_part('epoch', q.group_rate_period)" \
	"    OPERATOR(pg_catalog./) q.group_rate_count)" \
	"   FROM taskq.group_buckets b," \
	"   LATERAL (SELECT taskq._bucket(b.tokens, b.refilled_at, q.group_rate_count, q.group_rate_period," \
	"                pg_catalog.clock_timestamp()) AS tok) x" \
	"   WHERE b.queue OPERATOR(pg_catalog.=) t.queue AND b.group_key IS NOT DISTINCT FROM t.group_key" \
	"   AND x.tok OPERATOR(pg_catalog.<) 1) AS group_rate_at" \
	" FROM taskq.tasks t" \
	" LEFT JOIN taskq.queues q ON q.name OPERATOR(pg_catalog.=) t.queue" \
	" LEFT JOIN taskq.handlers h ON h.name OPERATOR(pg_catalog.=) t.handler" \
	" WHERE t.id OPERATOR(pg_catalog.=) $1"

/* The facts' row, decoded by name. */
typedef struct Facts
{
	HeapTuple	tup;
	TupleDesc	desc;
} Facts;

static bool
is_null(Facts *f, const char *col)
{
	bool		isnull;

	(void) SPI_getbinval(f->tup, f->desc, SPI_fnumber(f->desc, col), &isnull);
	return isnull;
}

/* A column as text (palloc'd), NULL for SQL NULL. */
static char *
str(Facts *f, const char *col)
{
	return SPI_getvalue(f->tup, f->desc, SPI_fnumber(f->desc, col));
}

static int
num(Facts *f, const char *col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(f->tup, f->desc, SPI_fnumber(f->desc, col), &isnull);

	return isnull ? 0 : DatumGetInt32(d);
}

static bool
flag(Facts *f, const char *col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(f->tup, f->desc, SPI_fnumber(f->desc, col), &isnull);

	return !isnull && DatumGetBool(d);
}

/* "group "k"" or "the tasks without a group_key", for the sentences. */
static char *
group_words(Facts *f)
{
	char	   *key = str(f, "group_key");

	return key ? psprintf("group \"%s\"", key) : pstrdup("the tasks without a group_key");
}

/* Whether a dispatcher of this database is alive now. */
static bool
dispatcher_alive(void)
{
	bool		alive = false;
	int			i;

	LWLockAcquire(taskq_lock(), LW_SHARED);
	for (i = 0; i < taskq_slot_count(); i++)
	{
		TaskqSlot  *slot = taskq_slot(i);

		if (slot->in_use && slot->dboid == MyDatabaseId && slot->pid != 0)
			alive = true;
	}
	LWLockRelease(taskq_lock());
	return alive;
}

/*
 * A waiting task: which of its parents it still waits for (deps.c keeps
 * the links).  Visibility was checked by the caller.
 */
static char *
explain_waiting(int64 id)
{
	char	   *parents = taskq_deps_explain(id);

	return psprintf("task " INT64_FORMAT " is %s", id,
					parents ? parents : "waiting on other tasks");
}

/* The sentence for a task that has started: running, dispatched or ended. */
static char *
explain_started(int64 id, Facts *f, const char *status)
{
	if (strcmp(status, "running") == 0)
		return psprintf("task " INT64_FORMAT " is running on dispatcher pid %s since %s",
						id, str(f, "worker_pid") ? str(f, "worker_pid") : "?", str(f, "started_at"));
	if (strcmp(status, "dispatched") == 0)
		return psprintf("task " INT64_FORMAT " was dispatched at %s and awaits an ack() or nack() until %s",
						id, str(f, "started_at"), str(f, "lease_until"));
	return psprintf("task " INT64_FORMAT " ended with status %s at %s",
					id, status, str(f, "finished_at") ? str(f, "finished_at") : "an unknown time");
}

/* The sentence for a queued task: the first reason that holds it. */
static char *
explain_queued(int64 id, Facts *f)
{
	char	   *queue = str(f, "queue");

	if (flag(f, "later"))
		return psprintf("task " INT64_FORMAT " is due at %s", id, str(f, "run_at"));
	if (flag(f, "paused"))
		return psprintf("task " INT64_FORMAT " is due, but its queue \"%s\" is paused", id, queue);
	if (!flag(f, "enabled"))
		return psprintf("task " INT64_FORMAT " is due, but its handler \"%s\" is disabled",
						id, str(f, "handler"));
	if (!is_null(f, "concurrency") && num(f, "running") >= num(f, "concurrency"))
		return psprintf("task " INT64_FORMAT " is due, but queue \"%s\" is at its concurrency limit: %d of %d tasks running",
						id, queue, num(f, "running"), num(f, "concurrency"));
	if (!is_null(f, "group_concurrency") && num(f, "group_running") >= num(f, "group_concurrency"))
		return psprintf("task " INT64_FORMAT " is due, but the group_concurrency limit of queue \"%s\" holds %s: %d of %d tasks running",
						id, queue, group_words(f), num(f, "group_running"), num(f, "group_concurrency"));
	if (!is_null(f, "rate_at"))
		return psprintf("task " INT64_FORMAT " is due, but queue \"%s\" used up its rate limit %s; the next task may start at %s",
						id, queue, str(f, "rate_limit"), str(f, "rate_at"));
	if (!is_null(f, "group_rate_at"))
		return psprintf("task " INT64_FORMAT " is due, but the group_rate_limit %s of queue \"%s\" is used up for %s; the next may start at %s",
						id, str(f, "group_rate_limit"), queue, group_words(f), str(f, "group_rate_at"));
	if (!taskq_enabled)
		return psprintf("task " INT64_FORMAT " is due, but taskq.enabled is off: no task is dispatched", id);
	if (!taskq_preloaded || !dispatcher_alive())
		return psprintf("task " INT64_FORMAT " is due, but no taskq dispatcher runs in this database", id);
	/* XXX: "no executor serves its queue" comes with taskq.executors */
	return psprintf("task " INT64_FORMAT " is due and waits for a dispatcher to claim it", id);
}

/* taskq.explain(id) */
Datum
taskq_explain(PG_FUNCTION_ARGS)
{
	int64		id;
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	TaskqAsOwner save;
	Facts		f;
	char	   *status;
	char	   *sentence;
	int			nest;
	MemoryContext caller = CurrentMemoryContext;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("id must not be NULL"),
				 errhint("Pass the id that taskq.enqueue() returned.")));
	id = PG_GETARG_INT64(0);
	values[0] = Int64GetDatum(id);
	SPI_connect();

	/* as the caller: another role's task reads as one not committed yet */
	nest = taskq_restrict_search_path();
	if (SPI_execute_plan(taskq_prepare(&visible_plan,
									   "SELECT FROM taskq.tasks WHERE id OPERATOR(pg_catalog.=) $1",
									   1, types),
						 values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: looking up task " INT64_FORMAT " failed", id);
	taskq_restore_search_path(nest);
	if (SPI_processed == 0)
	{
		SPI_finish();
		PG_RETURN_TEXT_P(cstring_to_text(psprintf("task " INT64_FORMAT " is not committed yet, or is not visible to you", id)));

	}

	taskq_become_owner(&save);
	if (SPI_execute_plan(taskq_prepare(&facts_plan, FACTS_SQL, 1, types),
						 values, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "taskq: reading what holds task " INT64_FORMAT " failed", id);
	taskq_restore_user(&save);
	f.tup = SPI_tuptable->vals[0];
	f.desc = SPI_tuptable->tupdesc;
	status = str(&f, "status");
	sentence = strcmp(status, "queued") == 0 ? explain_queued(id, &f) :
		strcmp(status, "waiting") == 0 ? explain_waiting(id) :
		explain_started(id, &f, status);
	sentence = MemoryContextStrdup(caller, sentence);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(sentence));
}
