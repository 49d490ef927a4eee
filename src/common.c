/*-------------------------------------------------------------------------
 *
 * common.c
 *	  The small helpers that every SQL-facing file shares: who the caller
 *	  is, acting as the extension's owner, the fixed search_path of our own
 *	  statements, prepared plans kept per backend,
 *	  name and interval checks, the retry backoff, and the version of the
 *	  extension's SQL objects.  It calls no other file of taskq, so any file may call it.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#if PG_VERSION_NUM >= 150000
#include "common/pg_prng.h"
#endif
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"


/* The role on whose behalf the current SQL call runs. */
Oid
taskq_caller(void)
{
	return GetUserId();
}

static char *extension_version(bool *uncommitted);

/*
 * Refuse to work on SQL objects of another version than this library
 * serves (a new library installed and the server restarted, ALTER
 * EXTENSION taskq UPDATE not yet run): its statements would fail on them
 * in ways that say nothing useful.
 *
 * Checked once per installation of the extension in a backend: the
 * outbox's oid changes with DROP/CREATE EXTENSION, and ALTER EXTENSION
 * UPDATE is the only other way the version moves, after which the check
 * passes for good.  But only a committed version is remembered: one that
 * this transaction wrote (CREATE or ALTER EXTENSION in it) may yet be
 * rolled back, to a savepoint or entirely, and PostgreSQL 15 sends no
 * invalidation for pg_extension that would tell us.  Such a transaction
 * checks at every call instead.
 */
static void
check_objects_version(Oid tasks_rel)
{
	static Oid	checked_rel = InvalidOid;
	char	   *found;
	bool		uncommitted;

	if (tasks_rel == checked_rel)
		return;
	found = extension_version(&uncommitted);
	if (found != NULL && strcmp(found, TASKQ_VERSION) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("taskq's SQL objects in this database are at version %s, but the loaded library is %s",
						found, TASKQ_VERSION),
				 errhint("Run ALTER EXTENSION taskq UPDATE.")));
	checked_rel = uncommitted ? InvalidOid : tasks_rel;
}

/*
 * Switch to the owner of taskq.tasks for the API's own statements.  The
 * owner is looked up each time: it changes with DROP/CREATE EXTENSION.
 */
void
taskq_become_owner(TaskqAsOwner *save)
{
	Oid			nsp = get_namespace_oid(TASKQ_SCHEMA, true);
	Oid			rel = OidIsValid(nsp) ? get_relname_relid("tasks", nsp) : InvalidOid;
	Oid			owner;
	HeapTuple	tup;

	if (!OidIsValid(rel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("taskq is not installed in this database"),
				 errhint("Run CREATE EXTENSION taskq.")));
	check_objects_version(rel);
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(rel));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", rel);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	GetUserIdAndSecContext(&save->save_userid, &save->save_sec_context);
	SetUserIdAndSecContext(owner, save->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	save->gucnest = taskq_restrict_search_path();
}

/*
 * Back to the caller, and to the caller's search_path.  An error between
 * the two calls needs no restore: the (sub)transaction's abort restores
 * both the role and the setting.
 */
void
taskq_restore_user(TaskqAsOwner *save)
{
	taskq_restore_search_path(save->gucnest);
	SetUserIdAndSecContext(save->save_userid, save->save_sec_context);
}

/*
 * Run our own statements under TASKQ_SAFE_SEARCH_PATH until the matching
 * taskq_restore_search_path(), as PostgreSQL 17's RestrictSearchPath()
 * does for maintenance commands.  Our SQL spells every operator, function
 * and type with its schema, but an implicit operator (IN, a join's USING)
 * is easy to write by mistake, and a plan is re-analysed under whatever
 * search_path it next runs with; with a fixed search_path neither the
 * caller's session nor ALTER DATABASE ... SET can put an object of theirs
 * into a statement that runs as the table owner or in a dispatcher.
 * Returns the GUC nest level to pass back.
 */
int
taskq_restrict_search_path(void)
{
	int			nest = NewGUCNestLevel();

	(void) set_config_option("search_path", TASKQ_SAFE_SEARCH_PATH,
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

/* Undo taskq_restrict_search_path(); nested calls undo in reverse order. */
void
taskq_restore_search_path(int nest)
{
	AtEOXact_GUC(true, nest);
}

/*
 * Prepare and keep a plan once per backend.  Plans survive DROP/CREATE
 * EXTENSION: the plan cache re-analyses them against the new objects.
 */
static SPIPlanPtr prepare_with_options(SPIPlanPtr *cache, const char *sql, int nargs,
										Oid *argtypes, int options);

/*
 * A statement's plan, prepared once per backend and kept in *cache: our
 * statements run on every enqueue and batch, so they are planned once.
 */
SPIPlanPtr
taskq_prepare(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	return prepare_with_options(cache, sql, nargs, argtypes, 0);
}

/* The same, for a statement planned anew for its parameter values each time. */
SPIPlanPtr
taskq_prepare_custom(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	return prepare_with_options(cache, sql, nargs, argtypes, CURSOR_OPT_CUSTOM_PLAN);
}

/*
 * The same, for a statement always run with its generic plan: a hot one,
 * whose plan does not depend on its parameter values.
 */
SPIPlanPtr
taskq_prepare_generic(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	return prepare_with_options(cache, sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
}

/* The one place that prepares and keeps a plan, for the three above. */
static SPIPlanPtr
prepare_with_options(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes, int options)
{
	SPIPlanPtr	plan;

	if (*cache != NULL)
		return *cache;
	plan = SPI_prepare_cursor(sql, nargs, argtypes, options);
	if (plan == NULL)
		elog(ERROR, "taskq: SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "taskq: SPI_keepplan failed");
	*cache = plan;
	return plan;
}

/*
 * Handler and queue names: 1 to 63 bytes, no control characters.  They
 * appear in logs, NOTIFY messages and settings, so keep them printable.
 */
void
taskq_check_name(const char *what, const char *value)
{
	const unsigned char *s;
	size_t		len = strlen(value);

	if (len == 0 || len > TASKQ_NAME_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s name \"%s\"", what, value),
				 errdetail("A %s name must be 1 to %d bytes long; this one is %zu.",
						   what, TASKQ_NAME_MAXLEN, len)));
	for (s = (const unsigned char *) value; *s; s++)
		if (*s < 0x20 || *s == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid %s name \"%s\"", what, value),
					 errdetail("A %s name must not contain control characters.", what)));
}

/*
 * An interval as milliseconds (rounded up), refusing negative ones and,
 * unless allow_zero, zero.  Months count as 30 days, as in Postgres.
 */
int64
taskq_interval_ms(const char *what, Interval *iv, bool allow_zero)
{
	int64		us;
	int64		days = (int64) iv->month * DAYS_PER_MONTH + iv->day;
	const int64 max_days = (PG_INT64_MAX / USECS_PER_DAY) / 2;
	char	   *shown = DatumGetCString(DirectFunctionCall1(interval_out, IntervalPGetDatum(iv)));

	if (days > max_days || days < -max_days)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is out of range: %s", what, shown),
				 errhint("Use an interval of at most a few years.")));
	us = days * USECS_PER_DAY + iv->time;
	if (us < 0 || (us == 0 && !allow_zero))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be %s: %s", what, allow_zero ? "zero or positive" : "positive", shown),
				 errhint("Use an interval such as '30 seconds'.")));
	return (us + 999) / 1000;
}

/*
 * Range checks that enqueue() and register_handler() share, with the same
 * words for the same mistake.  Each returns its value.
 */
int
taskq_check_priority(int priority)
{
	if (priority < TASKQ_PRIORITY_MIN || priority > TASKQ_PRIORITY_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("priority %d is out of range", priority),
				 errhint("Use a priority from %d to %d; higher runs sooner.",
						 TASKQ_PRIORITY_MIN, TASKQ_PRIORITY_MAX)));
	return priority;
}

/* max_attempts: 1 to TASKQ_MAX_ATTEMPTS, for enqueue, handlers and schedules. */
int
taskq_check_max_attempts(int max_attempts)
{
	if (max_attempts < 1 || max_attempts > TASKQ_MAX_ATTEMPTS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts %d is out of range", max_attempts),
				 errhint("Use a value from 1 to %d.", TASKQ_MAX_ATTEMPTS)));
	return max_attempts;
}

/*
 * group_key, as enqueue() and schedule() take it: 1 to TASKQ_MAX_GROUP_KEY
 * bytes of printable text.  It names a tenant in explain()'s sentences
 * and in logs, where a control character would forge or garble lines.
 */
void
taskq_check_group_key(const char *key)
{
	size_t		len = strlen(key);
	size_t		i;

	if (len == 0 || len > TASKQ_MAX_GROUP_KEY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_key must be 1 to %d bytes long; this one is %zu",
						TASKQ_MAX_GROUP_KEY, len),
				 errhint("Use a tenant, account or user id, such as 'tenant-42', or NULL.")));
	for (i = 0; i < len; i++)
	{
		if ((unsigned char) key[i] < 0x20 || key[i] == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("group_key \"%s\" contains a control character at byte %zu",
							key, i + 1),
					 errhint("Use printable characters only, such as 'tenant-42'.")));
	}
}

/*
 * Refuse a NULL for argument n of a non-strict SQL function, naming the
 * argument and how to fill it in (a strict function would return NULL
 * and do nothing, which hides the mistake).
 */
void
taskq_require_arg(FunctionCallInfo fcinfo, int n, const char *what, const char *hint)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", what),
				 errhint("%s", hint)));
}

/* A task's timeout is kept in an int of milliseconds by the workers. */
int64
taskq_check_timeout_ms(int64 timeout_ms)
{
	if (timeout_ms > INT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout is out of range: " INT64_FORMAT " ms", timeout_ms),
				 errhint("Use a timeout of at most 24 days.")));
	return timeout_ms;
}

/* A mode's name as the SQL API spells it, for messages and traces. */
const char *
taskq_mode_name(int mode)
{
	return mode == TASKQ_MODE_SYNC ? "sync" : "async";
}

/*
 * The delay before retry number attempt, in ms: taskq.retry_backoff,
 * doubled for each attempt before, capped at taskq.retry_backoff_max,
 * with jitter.  Retry policy that the dispatcher and retry() share.
 */
int64
taskq_backoff_ms(int attempt)
{
	double		ms = taskq_retry_backoff;
	int			i;

	for (i = 1; i < attempt && ms < taskq_retry_backoff_max; i++)
		ms *= 2;
	if (ms > taskq_retry_backoff_max)
		ms = taskq_retry_backoff_max;
	/* equal jitter: between half and all of the computed delay */
#if PG_VERSION_NUM >= 150000
	return (int64) (ms / 2 + (ms / 2) * pg_prng_double(&pg_global_prng_state));
#else
	return (int64) (ms / 2 + (ms / 2) * ((double) random() / MAX_RANDOM_VALUE));
#endif
}

/*
 * The version of taskq's SQL objects in this database (palloc'd), or NULL
 * when the extension is not installed.  PostgreSQL 15 has no syscache on
 * pg_extension, so this scans its name index; callers use it rarely.
 */
char *
taskq_extension_version(void)
{
	bool		uncommitted;

	return extension_version(&uncommitted);
}

/*
 * taskq_extension_version(), and whether the pg_extension row it read was
 * written by the current transaction (so not committed yet).
 */
static char *
extension_version(bool *uncommitted)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	*uncommitted = false;
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("taskq"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = text_to_cstring(DatumGetTextPP(d));
		*uncommitted = TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}
