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
 *	  logical	a logical-decoding message, written at enqueue (logical.c).
 *	  external	nothing here: workers outside the database claim its tasks
 *				(external.c); dispatchers never claim them.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "commands/async.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

/* ----------------------------------------------------------------
 * Targets, checked at registration
 * ----------------------------------------------------------------
 */

/*
 * Whether an error from parsing and looking up a target is about the
 * target (its syntax, a name, a type, a schema: classes 22, 42 and 3F).  Anything else,
 * above all the query_canceled of a timeout or cancel() that arrived
 * during the lookup, is not the target's fault and must reach the caller
 * as it was raised, so that the dispatcher records a timeout or a cancel
 * and not a bad handler.
 */
static bool
is_target_error(int sqlerrcode)
{
	int			category = ERRCODE_TO_CATEGORY(sqlerrcode);

	return category == ERRCODE_DATA_EXCEPTION ||
		category == ERRCODE_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION ||
		category == ERRCODE_INVALID_SCHEMA_NAME;
}

/*
 * Parse 'schema.fn(jsonb)' (or 'schema.fn', meaning the same) and look the
 * function up; InvalidOid if it does not exist.  A malformed target is an
 * error that names it.
 */
static Oid
lookup_function(const char *target, char **sig_out)
{
	char	   *sig = strchr(target, '(') ? pstrdup(target) : psprintf("%s(jsonb)", target);
	size_t		len = strlen(sig);
	char	   *lookup = sig;
	MemoryContext oldcontext = CurrentMemoryContext;
	volatile Oid fn = InvalidOid;
	ErrorData  *volatile edata = NULL;

	/*
	 * The argument type, which is always jsonb, is looked up in pg_catalog
	 * itself: a dispatcher resolves the stored 'schema.fn(jsonb)' under the
	 * handler's search_path, where another type could be named jsonb.
	 */
	if (len > 7 && strcmp(sig + len - 7, "(jsonb)") == 0)
		lookup = psprintf("%.*s(pg_catalog.jsonb)", (int) (len - 7), sig);
	PG_TRY();
	{
		fn = DatumGetObjectId(DirectFunctionCall1(regprocedurein, CStringGetDatum(lookup)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
	}
	PG_END_TRY();

	/* a missing function or schema is "does not exist"; the rest is syntax */
	if (edata != NULL && !is_target_error(edata->sqlerrcode))
		ReThrowError(edata);
	if (edata != NULL &&
		edata->sqlerrcode != ERRCODE_UNDEFINED_FUNCTION &&
		edata->sqlerrcode != ERRCODE_UNDEFINED_SCHEMA)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid handler function \"%s\"", target),
				 errdetail("%s", edata->message),
				 errhint("Give the function as 'schema.name(jsonb)' or 'schema.name'.")));
	*sig_out = sig;
	return fn;
}

/*
 * Resolve a function handler's target to a function that can be a
 * handler, or raise an error that says why not.
 */
Oid
taskq_resolve_function(const char *target, bool missing_ok)
{
	char	   *sig;
	Oid			fn = lookup_function(target, &sig);
	HeapTuple	tup;
	Form_pg_proc proc;

	if (!OidIsValid(fn))
	{
		if (missing_ok)
			return InvalidOid;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("handler function %s does not exist", sig),
				 errhint("A handler function takes one jsonb argument, e.g. CREATE FUNCTION app.send_mail(payload jsonb) RETURNS jsonb ...; give it as 'schema.name(jsonb)'.")));
	}
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fn);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	if (proc->pronargs != 1 || proc->proargtypes.values[0] != JSONBOID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("handler function %s must take exactly one argument of type jsonb",
						format_procedure(fn)),
				 errhint("Declare it as name(payload jsonb).")));
	if (proc->prokind != PROKIND_FUNCTION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("%s is not a plain function", format_procedure(fn)),
				 errhint("Procedures, aggregates and window functions cannot be handlers.")));
	if (proc->proretset)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("handler function %s must not return a set", format_procedure(fn)),
				 errhint("Return one value (jsonb, a scalar, a row) or void.")));
	if (isAnyTempNamespace(proc->pronamespace))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("handler function %s is temporary", format_procedure(fn)),
				 errhint("Dispatchers run in other sessions; create the function in a permanent schema.")));
	ReleaseSysCache(tup);
	return fn;
}

/* The canonical target of a handler function: 'schema.name(jsonb)'. */
static char *
function_target(Oid fn)
{
	return psprintf("%s(jsonb)",
					quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)),
											   get_func_name(fn)));
}

/*
 * NOTIFY channels: lower-case identifiers, so that an unquoted LISTEN of
 * the same name matches.
 */
static void
check_channel(const char *channel)
{
	const char *s;
	size_t		len = strlen(channel);
	bool		ok = len > 0 && len <= TASKQ_NAME_MAXLEN &&
		((channel[0] >= 'a' && channel[0] <= 'z') || channel[0] == '_');

	for (s = channel; ok && *s; s++)
		ok = (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_';
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid channel name \"%s\"", channel),
				 errhint("Use a lower-case identifier of at most %d bytes (letters, digits, _), so that LISTEN with the same name receives it.",
						 TASKQ_NAME_MAXLEN)));
}

/* function: the target must name a function that can be a handler. */
static char *
function_check_target(const char *target)
{
	return function_target(taskq_resolve_function(target, false));
}

/* notify: a channel that an unquoted LISTEN reaches. */
static char *
notify_check_target(const char *target)
{
	check_channel(target);
	return pstrdup(target);
}

/* log: free text for the server log, of a bounded length. */
static char *
log_check_target(const char *target)
{
	if (target[0] == '\0' || strlen(target) > 1024)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a log handler's target must be 1 to 1024 bytes long"),
				 errhint("Describe what the handler would do; it is written to the server log.")));
	return pstrdup(target);
}

/*
 * An external handler's target is optional: NULL, or a description of
 * who works its tasks (shown in taskq.handlers, used by nothing).
 */
static char *
external_check_target(const char *target)
{
	if (target == NULL)
		return NULL;
	if (target[0] == '\0' || strlen(target) > 1024)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an external handler's target must be NULL or 1 to 1024 bytes long"),
				 errhint("Describe who works its tasks, or pass NULL.")));
	return pstrdup(target);
}

/* ----------------------------------------------------------------
 * Running a task
 * ----------------------------------------------------------------
 */

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
	char	   *target;			/* hash key: 'schema.fn(jsonb)', all of it */
	SPIPlanPtr	plan;			/* NULL: build at the next call */
	Oid			result_type;	/* what the plan returns: jsonb or void */
} FunctionPlan;

static HTAB *function_plans = NULL;

/*
 * The plans are keyed by the whole target text, however long: a key cut
 * at a fixed length would let two targets that share its first bytes
 * share a plan, and one handler call the other's function.  The key is a
 * pointer to the text; a new entry keeps its own copy.
 */
static uint32
target_hash(const void *key, Size keysize)
{
	const char *s = *(const char *const *) key;

	return DatumGetUInt32(hash_any((const unsigned char *) s, strlen(s)));
}

static int
target_match(const void *key1, const void *key2, Size keysize)
{
	return strcmp(*(const char *const *) key1, *(const char *const *) key2);
}

static void *
target_keycopy(void *dest, const void *src, Size keysize)
{
	*(char **) dest = MemoryContextStrdup(TopMemoryContext, *(const char *const *) src);
	return dest;
}

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

	if (function_plans == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(char *);
		ctl.entrysize = sizeof(FunctionPlan);
		ctl.hash = target_hash;
		ctl.match = target_match;
		ctl.keycopy = target_keycopy;
		function_plans = hash_create("taskq function plans", 64, &ctl,
									 HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_KEYCOPY);
	}
	fp = hash_search(function_plans, &target, HASH_ENTER, &found);
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
static void
notify_check_task(const TaskqHandler *h, Jsonb *payload, Jsonb *metadata)
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

/* The log kind itself (taskq.dry_run logs through the same function). */
static void
execute_log_kind(TaskqTask *task, TaskqHandler *h, TaskqOutcome *out)
{
	execute_log(task, h, out, false);
}

/*
 * Dispatchers never claim external tasks, so only a sync enqueue gets
 * here: there is nothing in the database to run it with.
 */
static void
execute_external(TaskqTask *task, TaskqHandler *h, TaskqOutcome *out)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("handler \"%s\" is external and cannot run in the database", h->name),
			 errhint("Enqueue its tasks with mode => 'async'; external workers take them with taskq.claim().")));
}

/* ----------------------------------------------------------------
 * The kinds
 * ----------------------------------------------------------------
 */
static const TaskqKindOps kinds[] = {
	[TASKQ_KIND_FUNCTION] = {"function", function_check_target, false, NULL, execute_function},
	[TASKQ_KIND_NOTIFY] = {"notify", notify_check_target, true, notify_check_task, execute_notify},
	[TASKQ_KIND_LOG] = {"log", log_check_target, false, NULL, execute_log_kind},
	[TASKQ_KIND_LOGICAL] = {"logical", taskq_logical_check_target, false, NULL, taskq_logical_execute},
	[TASKQ_KIND_EXTERNAL] = {"external", external_check_target, false, NULL, execute_external},
};

const TaskqKindOps *
taskq_kind_ops(TaskqKind kind)
{
	Assert(kind >= 0 && kind < lengthof(kinds));
	return &kinds[kind];
}

const char *
taskq_kind_name(TaskqKind kind)
{
	return taskq_kind_ops(kind)->name;
}

/* "Use 'function', 'notify' or 'log'.": the hint for a bad kind. */
const char *
taskq_kind_hint(void)
{
	static char *hint = NULL;

	if (hint == NULL)
	{
		StringInfoData buf;
		int			i;

		initStringInfo(&buf);
		appendStringInfoString(&buf, "Use");
		for (i = 0; i < (int) lengthof(kinds); i++)
			appendStringInfo(&buf, "%s '%s'",
							 i == 0 ? "" : i == (int) lengthof(kinds) - 1 ? " or" : ",",
							 kinds[i].name);
		appendStringInfoChar(&buf, '.');
		hint = MemoryContextStrdup(TopMemoryContext, buf.data);
		pfree(buf.data);
	}
	return hint;
}

/* A kind by its name in taskq.handlers and register_handler(). */
TaskqKind
taskq_parse_kind(const char *name)
{
	int			i;

	for (i = 0; i < (int) lengthof(kinds); i++)
		if (strcmp(name, kinds[i].name) == 0)
			return (TaskqKind) i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown handler kind \"%s\"", name),
			 errhint("%s", taskq_kind_hint())));
	pg_unreachable();
}

/*
 * Run one task by its handler's kind.  Dispatchers under taskq.dry_run log
 * instead of running anything; a sync enqueue always runs the handler.
 * While it runs, taskq.current_task() returns its id.
 */
void
taskq_execute(TaskqTask *task, TaskqHandler *h, bool sync, TaskqOutcome *out)
{
	int64		outer = taskq_running_task; /* a sync enqueue inside a handler */

	taskq_running_task = task->id;	/* taskq.current_task() */
	PG_TRY();
	{
		if (!sync && taskq_dry_run)
			execute_log(task, h, out, true);
		else
			taskq_kind_ops(h->kind)->execute(task, h, out);
	}
	PG_FINALLY();
	{
		taskq_running_task = outer;
	}
	PG_END_TRY();
}
