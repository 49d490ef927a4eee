/*-------------------------------------------------------------------------
 *
 * executors.c
 *	  One function per handler kind.  Each runs one task in the caller's
 *	  current (sub)transaction, as the current user, and says what status
 *	  to record; errors propagate to the caller, which decides what they
 *	  mean (the dispatcher retries, a sync enqueue fails).
 *
 *	  function  calls 'schema.fn(jsonb)' with the payload; its result,
 *				converted to jsonb, is the task's result.
 *	  notify	pg_notify(channel, <task as JSON>), delivered at commit; the
 *				task then waits 'dispatched' for ack() unless ack => false.
 *	  log		writes what it would do to the server log (dry run).
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "catalog/pg_type.h"
#include "commands/async.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

/*
 * Prepared call of one handler function, kept per backend.  The plan is
 * built for the function that the target named when it was prepared: its
 * SQL (with or without to_jsonb) depends on that function's return type.
 * A DROP + CREATE under the same name, or CREATE OR REPLACE, invalidates
 * the plan; the plan cache would then re-analyse the same SQL against the
 * new function and silently yield a result of another type, so an
 * invalidated plan is thrown away and built again from the target.
 */
typedef struct FunctionPlan
{
	char		target[NAMEDATALEN * 4];	/* hash key: 'schema.fn(jsonb)' */
	SPIPlanPtr	plan;			/* NULL: build at the next call */
	Oid			result_type;	/* what the plan returns: jsonb or void */
} FunctionPlan;

static HTAB *function_plans = NULL;

/*
 * Build the call of the function that target names now.  The call is by
 * qualified name, and its result is converted to jsonb in the same
 * statement unless it is jsonb or void already.
 */
static void
build_function_plan(FunctionPlan *fp, const char *target)
{
	Oid			fn = taskq_resolve_function(target, true);
	Oid			rettype;
	char	   *call;
	Oid			argtypes[1] = {JSONBOID};

	if (!OidIsValid(fn))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("handler function %s does not exist", target),
				 errhint("Create the function again, or register the handler with another target.")));
	rettype = get_func_rettype(fn);
	call = quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)),
									  get_func_name(fn));
	fp->result_type = rettype == VOIDOID ? VOIDOID : JSONBOID;
	(void) taskq_prepare(&fp->plan,
						 psprintf(rettype == JSONBOID || rettype == VOIDOID ?
								  "SELECT %s($1)" :
								  "SELECT pg_catalog.to_jsonb(%s($1))", call),
						 1, argtypes);
}

/*
 * The prepared call of a handler function, built again when the function
 * changed since it was prepared (the plan was invalidated).
 */
static FunctionPlan *
function_plan(const char *target)
{
	FunctionPlan *fp;
	bool		found;
	char		key[NAMEDATALEN * 4];

	if (function_plans == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(key);
		ctl.entrysize = sizeof(FunctionPlan);
		function_plans = hash_create("taskq function plans", 64, &ctl, HASH_ELEM | HASH_STRINGS);
	}
	memset(key, 0, sizeof(key));
	strlcpy(key, target, sizeof(key));
	fp = hash_search(function_plans, key, HASH_ENTER, &found);
	if (!found)
		fp->plan = NULL;
	if (fp->plan != NULL && !SPI_plan_is_valid(fp->plan))
	{
		SPI_freeplan(fp->plan);
		fp->plan = NULL;
	}
	if (fp->plan == NULL)
		build_function_plan(fp, target);
	return fp;
}

/*
 * Call a handler function; its result is the task's.  The type of the
 * result column is checked on every call, not trusted from the plan: a
 * value of any other type stored as jsonb would be corrupt data, or
 * crash us.  A mismatch can only come from a redefinition that the plan
 * cache noticed after our validity check; the attempt fails and the next
 * one builds the call again.
 */
static void
execute_function(TaskqTask *task, TaskqHandler *h, TaskqOutcome *out)
{
	FunctionPlan *fp = function_plan(h->target);
	Datum		values[1] = {task->payload};
	bool		isnull;
	int			ret;
	Oid			type;

	ret = SPI_execute_plan(fp->plan, values, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "taskq: handler %s returned SPI code %s", h->target, SPI_result_code_string(ret));
	type = SPI_gettypeid(SPI_tuptable->tupdesc, 1);
	if (type != fp->result_type)
	{
		SPI_freeplan(fp->plan);
		fp->plan = NULL;
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("handler function %s was redefined while it was called", h->target),
				 errdetail("The call returned type %s where %s was expected.",
						   format_type_be(type), format_type_be(fp->result_type)),
				 errhint("The next attempt calls the new definition.")));
	}
	out->status = "completed";
	out->result_null = true;
	out->result = (Datum) 0;
	if (type == JSONBOID && SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			out->result = PointerGetDatum(PG_DETOAST_DATUM_COPY(d));
			out->result_null = false;
		}
	}
}

/*
 * The NOTIFY message of a task: a JSON object with its id, handler, queue,
 * attempt (1-based), priority, whether ack() is expected, payload and
 * metadata.  Raises an error if it exceeds NOTIFY's limit.
 */
static char *
notify_message(int64 id, const char *handler, const char *queue, int attempt,
			   int priority, bool ack, Jsonb *payload, Jsonb *metadata)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"id\": " INT64_FORMAT ", \"handler\": ", id);
	escape_json(&buf, handler);
	appendStringInfoString(&buf, ", \"queue\": ");
	escape_json(&buf, queue);
	appendStringInfo(&buf, ", \"attempt\": %d, \"priority\": %d, \"ack\": %s, \"payload\": ",
					 attempt, priority, ack ? "true" : "false");
	(void) JsonbToCString(&buf, &payload->root, VARSIZE(payload));
	appendStringInfoString(&buf, ", \"metadata\": ");
	if (metadata)
		(void) JsonbToCString(&buf, &metadata->root, VARSIZE(metadata));
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoChar(&buf, '}');

	if (buf.len > TASKQ_NOTIFY_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("payload too large for notify handler \"%s\"", handler),
				 errdetail("The NOTIFY message would be %d bytes; PostgreSQL's limit is %d bytes.",
						   buf.len, TASKQ_NOTIFY_MAXLEN),
				 errhint("Store the data in a table and enqueue its key, or use a function handler.")));
	return buf.data;
}

/*
 * Refuse, at enqueue, a payload whose NOTIFY message could not be sent:
 * the same message built with the widest id and attempt it could have.
 */
void
taskq_check_notify_size(const TaskqHandler *h, Jsonb *payload, Jsonb *metadata)
{
	pfree(notify_message(PG_INT64_MAX, h->name, "", 1000, TASKQ_PRIORITY_MIN, h->ack,
						 payload, metadata));
}

static void
execute_notify(TaskqTask *task, TaskqHandler *h, TaskqOutcome *out)
{
	char	   *msg = notify_message(task->id, task->handler, task->queue, task->attempts + 1,
									 task->priority, h->ack,
									 DatumGetJsonbP(task->payload),
									 task->metadata ? DatumGetJsonbP(task->metadata) : NULL);

	Async_Notify(h->target, msg);
	out->status = h->ack ? "dispatched" : "completed";
	out->result_null = true;
	out->result = (Datum) 0;
}

static void
execute_log(TaskqTask *task, TaskqHandler *h, TaskqOutcome *out, bool dry_run)
{
	Jsonb	   *payload = DatumGetJsonbP(task->payload);

	ereport(LOG,
			(errmsg("taskq: %s task " INT64_FORMAT " handler=%s kind=%s target=%s payload=%s",
					dry_run ? "dry run of" : "log handler ran",
					task->id, task->handler, taskq_kind_name(h->kind), h->target,
					JsonbToCString(NULL, &payload->root, VARSIZE(payload))),
			 errhidestmt(true)));
	out->status = "completed";
	out->result = DirectFunctionCall1(jsonb_in, CStringGetDatum(dry_run ? "{\"dry_run\": true}" : "{\"logged\": true}"));
	out->result_null = false;
}

/*
 * Run one task by its handler's kind.  Dispatchers under taskq.dry_run log
 * instead of running anything; a sync enqueue always runs the handler.
 */
void
taskq_execute(TaskqTask *task, TaskqHandler *h, bool sync, TaskqOutcome *out)
{
	if (!sync && taskq_dry_run)
	{
		execute_log(task, h, out, true);
		return;
	}
	switch (h->kind)
	{
		case TASKQ_KIND_FUNCTION:
			execute_function(task, h, out);
			break;
		case TASKQ_KIND_NOTIFY:
			execute_notify(task, h, out);
			break;
		case TASKQ_KIND_LOG:
			execute_log(task, h, out, false);
			break;
	}
}
