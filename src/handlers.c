/*-------------------------------------------------------------------------
 *
 * handlers.c
 *	  The handler registry: register_handler(), unregister_handler(), and
 *	  the lookup enqueue and dispatch share.
 *
 * A function handler's target is resolved once, at registration, to a
 * schema-qualified signature ('schema.fn(jsonb)'), so no later search_path
 * can redirect it.  A handler belongs to the role that registered it; only
 * that role (or one with its privileges) may change or remove it.
 *
 * Removing a handler ends its live tasks ('cancelled', running handlers
 * interrupted at commit), so that whoever registers the name next never
 * receives them.  A lock per handler name orders that against every
 * statement that makes a task of the handler live (enqueue, retry): they
 * hold it shared until they commit, unregister_handler() exclusively.
 * It is a heavyweight lock rather than FOR KEY SHARE on the handler's row,
 * which would write (and WAL-log) that row on every enqueue and turn
 * concurrent enqueues of one handler into MultiXacts.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/builtins.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(taskq_register_handler);
PG_FUNCTION_INFO_V1(taskq_unregister_handler);

/*
 * taskq's handler-name locks are advisory locks (pg_locks shows them so)
 * with this objsubid, which user advisory locks (1 and 2) never have.
 */
#define TASKQ_LOCKTAG_HANDLER	0x7451	/* "tQ" */

static SPIPlanPtr lookup_plan = NULL;
static SPIPlanPtr owner_plan = NULL;
static SPIPlanPtr upsert_plan = NULL;
static SPIPlanPtr delete_plan = NULL;
static SPIPlanPtr live_plan = NULL;
static SPIPlanPtr end_live_plan = NULL;

const char *
taskq_kind_name(TaskqKind kind)
{
	switch (kind)
	{
		case TASKQ_KIND_FUNCTION:
			return "function";
		case TASKQ_KIND_NOTIFY:
			return "notify";
		case TASKQ_KIND_LOG:
			return "log";
	}
	return "?";
}

static TaskqKind
parse_kind(const char *kind)
{
	if (strcmp(kind, "function") == 0)
		return TASKQ_KIND_FUNCTION;
	if (strcmp(kind, "notify") == 0)
		return TASKQ_KIND_NOTIFY;
	if (strcmp(kind, "log") == 0)
		return TASKQ_KIND_LOG;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown handler kind \"%s\"", kind),
			 errhint("Use 'function', 'notify' or 'log'.")));
	return TASKQ_KIND_LOG;		/* keep compiler quiet */
}

/*
 * Lock a handler's name until the end of the (sub)transaction, in mode
 * AccessShareLock (a task of it becomes live) or AccessExclusiveLock (it
 * is being removed).  Names are hashed: a collision only makes an
 * unregistration wait for some other handler's enqueues.
 */
static void
lock_handler_name(const char *name, LOCKMODE mode)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId,
						 hash_bytes((const unsigned char *) name, strlen(name)), 0,
						 TASKQ_LOCKTAG_HANDLER);
	(void) LockAcquire(&tag, mode, false, false);
}

static bool lookup_handler(const char *name, TaskqHandler *h, Snapshot snapshot);

/*
 * Look up a handler; the caller has SPI connected and may read
 * taskq.handlers.  Returns false when it is not registered.
 */
bool
taskq_lookup_handler(const char *name, TaskqHandler *h)
{
	return lookup_handler(name, h, InvalidSnapshot);
}

/*
 * Look up a handler for a task that is about to become live (enqueue,
 * retry).  Holds the handler's name lock until our transaction ends, so
 * that unregister_handler() waits for our task to commit before it ends
 * the handler's live tasks, and reads the registration as of now, not as
 * of a REPEATABLE READ snapshot, so that a handler unregistered meanwhile
 * is not found.
 */
bool
taskq_lookup_handler_locked(const char *name, TaskqHandler *h)
{
	lock_handler_name(name, AccessShareLock);
	return lookup_handler(name, h, GetLatestSnapshot());
}

/* The two above: with the statement's snapshot, or with this one. */
static bool
lookup_handler(const char *name, TaskqHandler *h, Snapshot snapshot)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	SPIPlanPtr	plan;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	plan = taskq_prepare(&lookup_plan,
						 "SELECT kind, target, queue, priority, max_attempts,"
						 " pg_catalog.ceil(pg_catalog.date_part('epoch', timeout) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8,"
						 " ack, enabled, owner::pg_catalog.oid"
						 " FROM taskq.handlers WHERE name OPERATOR(pg_catalog.=) $1",
						 1, types);
	values[0] = CStringGetTextDatum(name);
	if (SPI_execute_snapshot(plan, values, NULL, snapshot, InvalidSnapshot,
							 true, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.handlers");
	if (SPI_processed == 0)
		return false;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	memset(h, 0, sizeof(*h));
	strlcpy(h->name, name, sizeof(h->name));
	h->kind = parse_kind(TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull)));
	h->target = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
	d = SPI_getbinval(tup, desc, 3, &isnull);
	if (!isnull)
		text_to_cstring_buffer(DatumGetTextPP(d), h->queue, sizeof(h->queue));
	d = SPI_getbinval(tup, desc, 4, &isnull);
	h->has_priority = !isnull;
	h->priority = isnull ? 0 : DatumGetInt32(d);
	d = SPI_getbinval(tup, desc, 5, &isnull);
	h->has_max_attempts = !isnull;
	h->max_attempts = isnull ? 0 : DatumGetInt32(d);
	d = SPI_getbinval(tup, desc, 6, &isnull);
	h->has_timeout = !isnull;
	h->timeout_ms = isnull ? 0 : DatumGetInt64(d);
	h->ack = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	h->enabled = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
	h->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 9, &isnull));
	return true;
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
	MemoryContext oldcontext = CurrentMemoryContext;
	volatile Oid fn = InvalidOid;
	ErrorData  *volatile edata = NULL;

	PG_TRY();
	{
		fn = DatumGetObjectId(DirectFunctionCall1(regprocedurein, CStringGetDatum(sig)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
	}
	PG_END_TRY();

	/* a missing function or schema is "does not exist"; the rest is syntax */
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

/*
 * The registered owner of a handler (locked for update), or InvalidOid
 * when it is not registered.
 */
static Oid
check_handler_owner(const char *name)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	SPIPlanPtr	plan;
	bool		isnull;
	Oid			owner;

	plan = taskq_prepare(&owner_plan,
						 "SELECT owner::pg_catalog.oid FROM taskq.handlers"
						 " WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
						 1, types);
	values[0] = CStringGetTextDatum(name);
	if (SPI_execute_plan(plan, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.handlers");
	if (SPI_processed == 0)
		return InvalidOid;
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return owner;
}

static void
require_handler_privilege(const char *name, Oid caller, Oid owner, const char *action)
{
	if (OidIsValid(owner) && !has_privs_of_role(caller, owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s handler \"%s\"", action, name),
				 errdetail("The handler was registered by role \"%s\".",
						   GetUserNameFromId(owner, true) ? GetUserNameFromId(owner, true) : "?")));
}

static void
require_not_null(FunctionCallInfo fcinfo, int n, const char *what, const char *hint)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", what),
				 errhint("%s", hint)));
}

/*
 * taskq.register_handler(name, target, kind, queue, priority,
 *						  max_attempts, timeout, ack, enabled)
 */
Datum
taskq_register_handler(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *target;
	TaskqKind	kind;
	Oid			caller = taskq_caller();
	Oid			owner;
	TaskqAsOwner save;
	Oid			types[10] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID,
	INTERVALOID, BOOLOID, BOOLOID, OIDOID};
	Datum		values[10];
	char		nulls[10];

	require_not_null(fcinfo, 0, "name", "Pass the handler's name, which enqueue() will use.");
	require_not_null(fcinfo, 1, "target", "Pass 'schema.fn(jsonb)' for a function, a channel for notify, or a description for log.");
	require_not_null(fcinfo, 2, "kind", "Use 'function', 'notify' or 'log'.");
	require_not_null(fcinfo, 7, "ack", "Use true (wait for ack()) or false (complete on send).");
	require_not_null(fcinfo, 8, "enabled", "Use true, or false to keep its tasks queued.");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	target = text_to_cstring(PG_GETARG_TEXT_PP(1));
	kind = parse_kind(text_to_cstring(PG_GETARG_TEXT_PP(2)));

	taskq_check_name("handler", name);
	switch (kind)
	{
		case TASKQ_KIND_FUNCTION:
			target = function_target(taskq_resolve_function(target, false));
			break;
		case TASKQ_KIND_NOTIFY:
			check_channel(target);
			break;
		case TASKQ_KIND_LOG:
			if (target[0] == '\0' || strlen(target) > 1024)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("a log handler's target must be 1 to 1024 bytes long"),
						 errhint("Describe what the handler would do; it is written to the server log.")));
			break;
	}
	if (!PG_ARGISNULL(3))
		taskq_check_name("queue", text_to_cstring(PG_GETARG_TEXT_PP(3)));
	if (!PG_ARGISNULL(4) &&
		(PG_GETARG_INT32(4) < TASKQ_PRIORITY_MIN || PG_GETARG_INT32(4) > TASKQ_PRIORITY_MAX))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("priority %d is out of range", PG_GETARG_INT32(4)),
				 errhint("Use a priority from %d to %d; higher runs sooner.",
						 TASKQ_PRIORITY_MIN, TASKQ_PRIORITY_MAX)));
	if (!PG_ARGISNULL(5) && (PG_GETARG_INT32(5) < 1 || PG_GETARG_INT32(5) > 1000))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts %d is out of range", PG_GETARG_INT32(5)),
				 errhint("Use a value from 1 to 1000.")));
	if (!PG_ARGISNULL(6) &&
		taskq_interval_ms("timeout", PG_GETARG_INTERVAL_P(6), false) > INT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout is out of range: %s",
						DatumGetCString(DirectFunctionCall1(interval_out, PG_GETARG_DATUM(6)))),
				 errhint("Use a timeout of at most 24 days.")));
	if (!PG_GETARG_BOOL(7) && kind != TASKQ_KIND_NOTIFY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ack => false applies only to notify handlers"),
				 errhint("Function and log handlers complete when they return.")));

	SPI_connect();
	taskq_become_owner(&save);
	owner = check_handler_owner(name);
	require_handler_privilege(name, caller, owner, "update");

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(taskq_kind_name(kind));
	values[2] = CStringGetTextDatum(target);
	values[3] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[3] = PG_ARGISNULL(3) ? 'n' : ' ';
	values[4] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
	nulls[4] = PG_ARGISNULL(4) ? 'n' : ' ';
	values[5] = PG_ARGISNULL(5) ? (Datum) 0 : PG_GETARG_DATUM(5);
	nulls[5] = PG_ARGISNULL(5) ? 'n' : ' ';
	values[6] = PG_ARGISNULL(6) ? (Datum) 0 : PG_GETARG_DATUM(6);
	nulls[6] = PG_ARGISNULL(6) ? 'n' : ' ';
	values[7] = PG_GETARG_DATUM(7);
	values[8] = PG_GETARG_DATUM(8);
	values[9] = ObjectIdGetDatum(OidIsValid(owner) ? owner : caller);

	if (SPI_execute_plan(taskq_prepare(&upsert_plan,
									   "INSERT INTO taskq.handlers AS h (name, kind, target, queue, priority,"
									   " max_attempts, timeout, ack, enabled, owner)"
									   " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::pg_catalog.regrole)"
									   " ON CONFLICT (name) DO UPDATE SET kind = excluded.kind,"
									   " target = excluded.target, queue = excluded.queue,"
									   " priority = excluded.priority, max_attempts = excluded.max_attempts,"
									   " timeout = excluded.timeout, ack = excluded.ack,"
									   " enabled = excluded.enabled",
									   10, types),
						 values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "taskq: could not write taskq.handlers");
	taskq_restore_user(&save);
	SPI_finish();

	/* Enabling a handler may make waiting tasks claimable. */
	taskq_request_wakeup_at_commit(TASKQ_WAKE_ALL);
	PG_RETURN_VOID();
}

/*
 * End the live tasks of a handler being removed: 'cancelled', with
 * last_error naming the removal, and the running ones interrupted at
 * commit.  The caller holds the handler's name lock exclusively, so no
 * task of it becomes live meanwhile; the rows are read and locked as of
 * now (not of a REPEATABLE READ snapshot), so that a task committed while
 * we waited for that lock is ended too.  Returns how many ended.
 */
static uint64
end_live_tasks(const char *name)
{
	Oid			types[2] = {TEXTOID, INT8ARRAYOID};
	Datum		values[2];
	Datum	   *ids;
	uint64		n;
	uint64		i;
	bool		isnull;

	values[0] = CStringGetTextDatum(name);
	if (SPI_execute_snapshot(taskq_prepare(&live_plan,
										   "SELECT id, status OPERATOR(pg_catalog.=) 'running'"
										   " FROM taskq.tasks"
										   " WHERE handler OPERATOR(pg_catalog.=) $1"
										   " AND status " TASKQ_SQL_LIVE
										   " ORDER BY id FOR UPDATE",
										   1, types),
							 values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 false, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.tasks");
	n = SPI_processed;
	if (n == 0)
		return 0;
	ids = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];

		ids[i] = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull);
		if (DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)))
			taskq_request_interrupt_at_commit(DatumGetInt64(ids[i]));
	}
	values[1] = PointerGetDatum(construct_array(ids, (int) n, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_snapshot(taskq_prepare(&end_live_plan,
										   "UPDATE taskq.tasks SET status = 'cancelled',"
										   " finished_at = pg_catalog.now(), lease_until = NULL,"
										   " last_error = 'handler \"' OPERATOR(pg_catalog.||) $1"
										   "   OPERATOR(pg_catalog.||) '\" was unregistered'"
										   " WHERE id OPERATOR(pg_catalog.=) ANY ($2)",
										   2, types),
							 values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 false, true, 0) != SPI_OK_UPDATE)
		elog(ERROR, "taskq: could not cancel the tasks of handler \"%s\"", name);
	return n;
}

/*
 * taskq.unregister_handler(name): true if it existed.  Its live tasks end
 * 'cancelled' in the same transaction (end_live_tasks), so that a handler
 * registered under the name later, by any role, never receives them.
 */
Datum
taskq_unregister_handler(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			caller = taskq_caller();
	Oid			owner;
	TaskqAsOwner save;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	uint64		ended = 0;

	require_not_null(fcinfo, 0, "name", "Pass the name of a registered handler.");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	SPI_connect();
	taskq_become_owner(&save);
	owner = check_handler_owner(name);
	require_handler_privilege(name, caller, owner, "unregister");
	values[0] = CStringGetTextDatum(name);
	if (OidIsValid(owner))
	{
		/* only now: a role that may not unregister must not hold up enqueues */
		lock_handler_name(name, AccessExclusiveLock);
		if (SPI_execute_plan(taskq_prepare(&delete_plan,
										   "DELETE FROM taskq.handlers WHERE name OPERATOR(pg_catalog.=) $1",
										   1, types),
							 values, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "taskq: could not write taskq.handlers");
		ended = end_live_tasks(name);
	}
	taskq_restore_user(&save);
	SPI_finish();
	if (ended > 0)
		ereport(NOTICE,
				(errmsg("unregistering handler \"%s\" cancelled " UINT64_FORMAT " live task%s",
						name, ended, ended == 1 ? "" : "s")));
	PG_RETURN_BOOL(OidIsValid(owner));
}
