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
 * Removing a handler ends its live tasks ('cancelled', running handlers
 * interrupted at commit), so that whoever registers the name next never
 * receives them.  A lock per handler name orders that against every
 * statement that makes a task of the handler live (enqueue, retry): they
 * hold it shared until they commit, unregister_handler() exclusively.
 * It is a heavyweight lock rather than FOR KEY SHARE on the handler's row,
 * which would write (and WAL-log) that row on every enqueue and turn
 * concurrent enqueues of one handler into MultiXacts.
 *
 * enqueue() and retry() read registrations through a per-backend cache
 * (see "The registration cache" below), so that an enqueue of a known
 * handler runs no statement on taskq.handlers.
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
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
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
static SPIPlanPtr reflag_plan = NULL;

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

/* ----------------------------------------------------------------
 * The registration cache
 *
 * Registrations as enqueue() and retry() last read them, by name, for
 * this backend.  Every change to taskq.handlers through the API
 * (register_handler, unregister_handler) sends a relcache invalidation
 * for taskq.handlers, which PostgreSQL delivers transactionally: to this
 * backend at its next command and again when the change rolls back, to
 * the others when it commits, before its locks are released.  A lookup
 * takes the handler's name lock first and then accepts pending
 * invalidations, so an enqueue that waited for an unregister_handler()
 * sees its commit exactly as a fresh read would.  DDL on taskq.handlers
 * (DROP EXTENSION included) invalidates it too.  Writes to taskq.handlers
 * that bypass the API (a superuser's UPDATE) are not seen until the next
 * API change; README says so.  Only registered handlers are cached, so an
 * unknown name always reads the table.
 * ----------------------------------------------------------------
 */
typedef struct CachedHandler
{
	char		name[TASKQ_NAME_MAXLEN + 1];	/* the hash key */
	TaskqHandler h;				/* h.target in CacheMemoryContext */
} CachedHandler;

static HTAB *handler_cache = NULL;
static Oid	handler_cache_rel = InvalidOid; /* taskq.handlers when filled */
static bool handler_cache_callback = false;

/* Empty the cache, targets included. */
static void
forget_handlers(void)
{
	HASH_SEQ_STATUS seq;
	CachedHandler *c;

	if (handler_cache == NULL)
		return;
	hash_seq_init(&seq, handler_cache);
	while ((c = hash_seq_search(&seq)) != NULL)
		if (c->h.target)
			pfree(c->h.target);
	hash_destroy(handler_cache);
	handler_cache = NULL;
	handler_cache_rel = InvalidOid;
}

/*
 * Relcache callback: a change to taskq.handlers (or a reset of every
 * cache, relid InvalidOid) empties ours.
 */
static void
handlers_changed(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == handler_cache_rel)
		forget_handlers();
}

/* taskq.handlers, or InvalidOid when the extension is not there. */
static Oid
handlers_rel(void)
{
	Oid			nsp = get_namespace_oid(TASKQ_SCHEMA, true);

	return OidIsValid(nsp) ? get_relname_relid("handlers", nsp) : InvalidOid;
}

/*
 * The cached registration of name, if any, for a caller that may read
 * taskq.handlers (the privilege is checked as a read would check it).
 */
static bool
cached_handler(const char *name, TaskqHandler *h)
{
	CachedHandler *c;

	if (handler_cache == NULL)
		return false;
	c = hash_search(handler_cache, name, HASH_FIND, NULL);
	if (c == NULL ||
		pg_class_aclcheck(handler_cache_rel, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		return false;
	*h = c->h;
	h->target = c->h.target ? pstrdup(c->h.target) : NULL;	/* external: optional */
	return true;
}

/* Remember a registration just read from taskq.handlers. */
static void
cache_handler(const TaskqHandler *h)
{
	CachedHandler *c;
	bool		found;

	if (!handler_cache_callback)
	{
		CacheRegisterRelcacheCallback(handlers_changed, (Datum) 0);
		handler_cache_callback = true;
	}
	if (handler_cache == NULL)
	{
		HASHCTL		ctl;

		handler_cache_rel = handlers_rel();
		if (!OidIsValid(handler_cache_rel))
			return;
		ctl.keysize = TASKQ_NAME_MAXLEN + 1;
		ctl.entrysize = sizeof(CachedHandler);
		ctl.hcxt = CacheMemoryContext;
		handler_cache = hash_create("taskq handlers", 16, &ctl,
									HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	c = hash_search(handler_cache, h->name, HASH_ENTER, &found);
	if (found)
		if (c->h.target)
			pfree(c->h.target);
	c->h = *h;
	c->h.target = h->target ? MemoryContextStrdup(CacheMemoryContext, h->target) : NULL;
}

/*
 * After a change to taskq.handlers: every backend's cache (this one's at
 * our next command, the others' at commit) forgets what it holds.
 */
static void
invalidate_handlers(void)
{
	Oid			rel = handlers_rel();

	if (OidIsValid(rel))
		CacheInvalidateRelcacheByRelid(rel);
}

/*
 * Look up a handler; the caller has SPI connected and may read
 * taskq.handlers.  Returns false when it is not registered.  Runs as the
 * caller, but under our fixed search_path like every statement of ours.
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
	AcceptInvalidationMessages();
	if (cached_handler(name, h))
		return true;
	if (!lookup_handler(name, h, GetLatestSnapshot()))
		return false;
	cache_handler(h);
	return true;
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
	int			gucnest = taskq_restrict_search_path();

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
	taskq_restore_search_path(gucnest);
	if (SPI_processed == 0)
		return false;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	memset(h, 0, sizeof(*h));
	strlcpy(h->name, name, sizeof(h->name));
	h->kind = taskq_parse_kind(TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull)));
	d = SPI_getbinval(tup, desc, 2, &isnull);
	h->target = isnull ? NULL : TextDatumGetCString(d);	/* external: optional */
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
 * when it is not registered; *kind (when not NULL) gets its kind, or
 * NULL.  One read serves the privilege check and the kind change.
 */
static Oid
check_handler_owner(const char *name, char **kind)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	SPIPlanPtr	plan;
	bool		isnull;
	Oid			owner;

	plan = taskq_prepare(&owner_plan,
						 "SELECT owner::pg_catalog.oid, kind FROM taskq.handlers"
						 " WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
						 1, types);
	values[0] = CStringGetTextDatum(name);
	if (SPI_execute_plan(plan, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.handlers");
	if (kind != NULL)
		*kind = NULL;
	if (SPI_processed == 0)
		return InvalidOid;
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (kind != NULL)
		*kind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	return owner;
}

/*
 * Only the role that registered a handler (or one that has its
 * privileges) may change or drop it: another role could redirect its tasks.
 */
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
	nulls[2] = target ? ' ' : 'n';
	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(kind);
	values[2] = target ? CStringGetTextDatum(target) : (Datum) 0;
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
 * When a registration changes between kind 'external' and another kind,
 * its tasks move between the dispatchers' claim and taskq.claim()
 * (taskq.tasks.external picks the index each reads): wait for the
 * enqueues in flight that read the old kind (they hold the name lock),
 * then flag the handler's tasks, ended ones too (retry() requeues them),
 * for the new kind.  This reads the whole table, once per kind change.
 */
static void
reflag_tasks_on_kind_change(const char *name, const char *old_kind, const char *kind)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(name), CStringGetTextDatum(kind)};

	if (old_kind == NULL ||
		(strcmp(old_kind, "external") == 0) == (strcmp(kind, "external") == 0))
		return;
	lock_handler_name(name, AccessExclusiveLock);
	if (SPI_execute_plan(taskq_prepare(&reflag_plan,
									   "UPDATE taskq.tasks SET external = ($2 OPERATOR(pg_catalog.=) 'external')"
									   " WHERE handler OPERATOR(pg_catalog.=) $1"
									   "   AND external OPERATOR(pg_catalog.<>) ($2 OPERATOR(pg_catalog.=) 'external')",
									   2, types),
						 values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "taskq: could not update the tasks of handler \"%s\"", name);
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
	char	   *old_kind;
	TaskqAsOwner save;

	taskq_require_arg(fcinfo, 0, "name", "Pass the handler's name, which enqueue() will use.");
	taskq_require_arg(fcinfo, 2, "kind", taskq_kind_hint());
	taskq_require_arg(fcinfo, 7, "ack", "Use true (wait for ack()) or false (complete on send).");
	taskq_require_arg(fcinfo, 8, "enabled", "Use true, or false to keep its tasks queued.");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ops = taskq_kind_ops(taskq_parse_kind(text_to_cstring(PG_GETARG_TEXT_PP(2))));
	if (strcmp(ops->name, "external") != 0)	/* the one kind without a target */
		taskq_require_arg(fcinfo, 1, "target", "Pass 'schema.fn(jsonb)' for a function, a channel for notify, a description for log, or a message prefix for logical.");
	taskq_check_name("handler", name);
	target = ops->check_target(PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)));
	check_registration_options(fcinfo, ops);

	SPI_connect();
	taskq_become_owner(&save);
	owner = check_handler_owner(name, &old_kind);
	require_handler_privilege(name, caller, owner, "update");
	reflag_tasks_on_kind_change(name, old_kind, ops->name);
	write_registration(fcinfo, name, ops->name, target, OidIsValid(owner) ? owner : caller);
	invalidate_handlers();
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
	uint64		dropped = 0;

	taskq_require_arg(fcinfo, 0, "name", "Pass the name of a registered handler.");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	SPI_connect();
	taskq_become_owner(&save);
	owner = check_handler_owner(name, NULL);
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
		invalidate_handlers();
		ended = end_live_tasks(name);
		dropped = taskq_schedules_drop_handler(name);	/* schedules.c */
	}
	taskq_restore_user(&save);
	SPI_finish();
	if (ended > 0)
		ereport(NOTICE,
				(errmsg("unregistering handler \"%s\" cancelled " UINT64_FORMAT " live task%s",
						name, ended, ended == 1 ? "" : "s")));
	if (dropped > 0)
		ereport(NOTICE,
				(errmsg("unregistering handler \"%s\" dropped " UINT64_FORMAT " schedule%s",
						name, dropped, dropped == 1 ? "" : "s")));
	PG_RETURN_BOOL(OidIsValid(owner));
}
