/*-------------------------------------------------------------------------
 *
 * handlers.c
 *	  The handler registry: register_handler(), unregister_handler(), and
 *	  the lookup enqueue and dispatch share.  What a kind accepts as its
 *	  target is the kind's business (executors.c).
 *
 * A handler belongs to the role that registered it; only
 * that role (or one with its privileges) may change or remove it.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/builtins.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(taskq_register_handler);
PG_FUNCTION_INFO_V1(taskq_unregister_handler);

static SPIPlanPtr lookup_plan = NULL;
static SPIPlanPtr owner_plan = NULL;
static SPIPlanPtr upsert_plan = NULL;
static SPIPlanPtr delete_plan = NULL;

/*
 * Look up a handler; the caller has SPI connected and may read
 * taskq.handlers.  Returns false when it is not registered.  Runs as the
 * caller, but under our fixed search_path like every statement of ours.
 */
bool
taskq_lookup_handler(const char *name, TaskqHandler *h)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	SPIPlanPtr	plan;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	int			gucnest = taskq_restrict_search_path();

	plan = taskq_prepare(&lookup_plan,
						 "SELECT kind, target, queue, priority, max_attempts,"
						 " pg_catalog.ceil(pg_catalog.date_part('epoch', timeout) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8,"
						 " ack, enabled, owner::pg_catalog.oid"
						 " FROM taskq.handlers WHERE name OPERATOR(pg_catalog.=) $1",
						 1, types);
	values[0] = CStringGetTextDatum(name);
	if (SPI_execute_plan(plan, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.handlers");
	taskq_restore_search_path(gucnest);
	if (SPI_processed == 0)
		return false;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	memset(h, 0, sizeof(*h));
	strlcpy(h->name, name, sizeof(h->name));
	h->kind = taskq_parse_kind(TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull)));
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
 * Check register_handler()'s options other than name, target and kind,
 * before anything is written.  The range checks are enqueue()'s own.
 */
static void
check_registration_options(FunctionCallInfo fcinfo, const TaskqKindOps *ops)
{
	if (!PG_ARGISNULL(3))
		taskq_check_name("queue", text_to_cstring(PG_GETARG_TEXT_PP(3)));
	if (!PG_ARGISNULL(4))
		(void) taskq_check_priority(PG_GETARG_INT32(4));
	if (!PG_ARGISNULL(5))
		(void) taskq_check_max_attempts(PG_GETARG_INT32(5));
	if (!PG_ARGISNULL(6) &&
		taskq_interval_ms("timeout", PG_GETARG_INTERVAL_P(6), false) > INT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout is out of range: %s",
						DatumGetCString(DirectFunctionCall1(interval_out, PG_GETARG_DATUM(6)))),
				 errhint("Use a timeout of at most 24 days.")));
	if (!PG_GETARG_BOOL(7) && !ops->may_skip_ack)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ack => false applies only to notify handlers"),
				 errhint("Function and log handlers complete when they return.")));
}

/* An optional argument as a statement parameter. */
static void
optional_arg(FunctionCallInfo fcinfo, int n, Datum *value, char *null)
{
	*value = PG_ARGISNULL(n) ? (Datum) 0 : PG_GETARG_DATUM(n);
	*null = PG_ARGISNULL(n) ? 'n' : ' ';
}

/*
 * Insert or update the registration; an existing one keeps its owner.
 * Runs as the table owner.
 */
static void
write_registration(FunctionCallInfo fcinfo, const char *name, const char *kind,
				   const char *target, Oid owner)
{
	Oid			types[10] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID,
	INTERVALOID, BOOLOID, BOOLOID, OIDOID};
	Datum		values[10];
	char		nulls[10];
	int			i;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(kind);
	values[2] = CStringGetTextDatum(target);
	for (i = 3; i <= 6; i++)
		optional_arg(fcinfo, i, &values[i], &nulls[i]);
	values[7] = PG_GETARG_DATUM(7);
	values[8] = PG_GETARG_DATUM(8);
	values[9] = ObjectIdGetDatum(owner);

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
}

/*
 * taskq.register_handler(name, target, kind, queue, priority,
 *						  max_attempts, timeout, ack, enabled): check
 * everything, then insert or update the registration.  The kind checks
 * and canonicalises the target (executors.c).
 */
Datum
taskq_register_handler(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *target;
	const TaskqKindOps *ops;
	Oid			caller = taskq_caller();
	Oid			owner;
	TaskqAsOwner save;

	require_not_null(fcinfo, 0, "name", "Pass the handler's name, which enqueue() will use.");
	require_not_null(fcinfo, 1, "target", "Pass 'schema.fn(jsonb)' for a function, a channel for notify, or a description for log.");
	require_not_null(fcinfo, 2, "kind", taskq_kind_hint());
	require_not_null(fcinfo, 7, "ack", "Use true (wait for ack()) or false (complete on send).");
	require_not_null(fcinfo, 8, "enabled", "Use true, or false to keep its tasks queued.");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ops = taskq_kind_ops(taskq_parse_kind(text_to_cstring(PG_GETARG_TEXT_PP(2))));
	taskq_check_name("handler", name);
	target = ops->check_target(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	check_registration_options(fcinfo, ops);

	SPI_connect();
	taskq_become_owner(&save);
	owner = check_handler_owner(name);
	require_handler_privilege(name, caller, owner, "update");
	write_registration(fcinfo, name, ops->name, target, OidIsValid(owner) ? owner : caller);
	taskq_restore_user(&save);
	SPI_finish();

	/* Enabling a handler may make waiting tasks claimable. */
	taskq_request_wakeup_at_commit(TASKQ_WAKE_ALL);
	PG_RETURN_VOID();
}

/*
 * taskq.unregister_handler(name): true if it existed.  Tasks already
 * enqueued for it fail when dispatched, with an error naming it.
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

	require_not_null(fcinfo, 0, "name", "Pass the name of a registered handler.");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	SPI_connect();
	taskq_become_owner(&save);
	owner = check_handler_owner(name);
	require_handler_privilege(name, caller, owner, "unregister");
	values[0] = CStringGetTextDatum(name);
	if (OidIsValid(owner) &&
		SPI_execute_plan(taskq_prepare(&delete_plan,
									   "DELETE FROM taskq.handlers WHERE name OPERATOR(pg_catalog.=) $1",
									   1, types),
						 values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "taskq: could not write taskq.handlers");
	taskq_restore_user(&save);
	SPI_finish();
	PG_RETURN_BOOL(OidIsValid(owner));
}
