/*-------------------------------------------------------------------------
 *
 * schedules.c
 *	  Recurring tasks: taskq.schedule(), taskq.unschedule(),
 *	  taskq._cron_next(), and the tick that one dispatcher per database
 *	  runs to fire due schedules (also callable as taskq._tick(), for tests).
 *
 * A schedule is a row of taskq.schedules, owned by the role that made it.
 * A tick is one taskq.enqueue() call, run as that owner (so enqueue's own
 * privilege check, policies and limits apply at fire time), in the same
 * transaction that advances the schedule's next_run_at: a crash either
 * keeps both or neither, so no tick runs twice or vanishes.  Due rows are
 * locked FOR UPDATE SKIP LOCKED, so a second firer could never fire the
 * same tick; by rule only one fires (taskq_schedules_firer).
 *
 * What the text means (cron, intervals, time zones) is cron.c's business.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(taskq_schedule);
PG_FUNCTION_INFO_V1(taskq_unschedule);
PG_FUNCTION_INFO_V1(taskq_cron_next_sql);
PG_FUNCTION_INFO_V1(taskq_tick_sql);

#define TICK_SCHEDULES		32	/* schedules per tick transaction (one subxact each) */
#define CATCH_UP_MAX		100 /* missed ticks one schedule enqueues per transaction */
#define LOCKED_RETRY_MS		100 /* a due schedule locked by someone: look again then */
#define TICK_GAP_MS			100 /* the firer looks at most this often when nothing is due */

static SPIPlanPtr upsert_plan = NULL;
static SPIPlanPtr owner_plan = NULL;
static SPIPlanPtr delete_plan = NULL;
static SPIPlanPtr may_enqueue_plan = NULL;
static SPIPlanPtr due_plan = NULL;
static SPIPlanPtr fire_plan = NULL;
static SPIPlanPtr advance_plan = NULL;
static SPIPlanPtr failed_plan = NULL;
static SPIPlanPtr next_plan = NULL;
static SPIPlanPtr drop_plan = NULL;

/* The firer's last look: when, and the earliest next_run_at it found. */
static TimestampTz last_look = 0;
static bool said_firer = false;	/* the firer logs that it is, once */
static TimestampTz next_known = 0;

/* A due schedule as the tick reads it. */
typedef struct DueSchedule
{
	char	   *name;
	char	   *cron;
	char	   *timezone;
	bool		catch_up;
	TimestampTz next_run_at;
	Oid			owner;
	Datum		values[8];		/* enqueue's arguments, see FIRE_SQL */
	char		nulls[8];
} DueSchedule;

/* ----------------------------------------------------------------
 * SQL API
 * ----------------------------------------------------------------
 */

/*
 * schedule()'s enqueue options, checked as enqueue() checks them, so that
 * a schedule never holds a value its ticks would be refused for.
 */
static void
check_enqueue_options(FunctionCallInfo fcinfo)
{
	if (!PG_ARGISNULL(6))
		(void) taskq_check_priority(PG_GETARG_INT32(6));
	if (!PG_ARGISNULL(7))
		taskq_check_name("queue", text_to_cstring(PG_GETARG_TEXT_PP(7)));
	if (!PG_ARGISNULL(8))
		(void) taskq_check_max_attempts(PG_GETARG_INT32(8));
	if (!PG_ARGISNULL(9))
		taskq_check_timeout_ms(taskq_interval_ms("timeout", PG_GETARG_INTERVAL_P(9), false));
	if (!PG_ARGISNULL(10))
		taskq_check_group_key(text_to_cstring(PG_GETARG_TEXT_PP(10)));
	if (!PG_ARGISNULL(11) && !JB_ROOT_IS_OBJECT(PG_GETARG_JSONB_P(11)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metadata must be a JSON object"),
				 errhint("For example '{\"trace_id\": \"abc\"}'.")));
}

/*
 * A role that may not enqueue may not schedule: refuse one without
 * EXECUTE on taskq.enqueue (every signature of it).  The tick checks
 * again at fire time, as the owner, by calling enqueue().
 */
static void
require_may_enqueue(const char *handler, Oid role)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(role)};
	bool		isnull;

	if (SPI_execute_plan(taskq_prepare(&may_enqueue_plan,
									   "SELECT pg_catalog.bool_and(pg_catalog.has_function_privilege($1, p.oid, 'EXECUTE'))"
									   " FROM pg_catalog.pg_proc p"
									   " WHERE p.proname OPERATOR(pg_catalog.=) 'enqueue'"
									   " AND p.pronamespace OPERATOR(pg_catalog.=) 'taskq'::pg_catalog.regnamespace",
									   1, types),
						 values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read pg_proc");
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) && !isnull)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to schedule handler \"%s\"", handler),
				 errdetail("Role \"%s\" may not call taskq.enqueue().", GetUserNameFromId(role, false)),
				 errhint("A role schedules only what it may enqueue.")));
}

/* The owner of a schedule (its row locked), or InvalidOid if there is none. */
static Oid
schedule_owner(const char *name)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	bool		isnull;

	if (SPI_execute_plan(taskq_prepare(&owner_plan,
									   "SELECT owner::pg_catalog.oid FROM taskq.schedules"
									   " WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
									   1, types),
						 values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.schedules");
	if (SPI_processed == 0)
		return InvalidOid;
	return DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Only the schedule's owner (or a role with its privileges) may change or
 * drop it: its ticks run as the owner.
 */
static void
require_schedule_privilege(const char *name, Oid caller, Oid owner, const char *action)
{
	if (OidIsValid(owner) && !has_privs_of_role(caller, owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s schedule \"%s\"", action, name),
				 errdetail("The schedule belongs to role \"%s\".",
						   GetUserNameFromId(owner, true) ? GetUserNameFromId(owner, true) : "?")));
}

/* An optional argument as a statement parameter. */
static void
optional_arg(FunctionCallInfo fcinfo, int n, Datum *value, char *null)
{
	*value = PG_ARGISNULL(n) ? (Datum) 0 : PG_GETARG_DATUM(n);
	*null = PG_ARGISNULL(n) ? 'n' : ' ';
}

/*
 * Insert or update the schedule; an existing one keeps its owner, and its
 * next_run_at unless its timing changed or it was disabled.  Runs as the
 * table owner, after schedule_owner() locked the row or found none.
 */
static void
write_schedule(FunctionCallInfo fcinfo, TimestampTz next_run_at, Oid owner)
{
	Oid			types[15] = {TEXTOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, BOOLOID,
		INT4OID, TEXTOID, INT4OID, INTERVALOID, TEXTOID, JSONBOID, BOOLOID,
	TIMESTAMPTZOID, OIDOID};
	Datum		values[15];
	char		nulls[15];
	int			i;

	for (i = 0; i < 13; i++)
		optional_arg(fcinfo, i, &values[i], &nulls[i]);
	values[13] = TimestampTzGetDatum(next_run_at);
	nulls[13] = ' ';
	values[14] = ObjectIdGetDatum(owner);
	nulls[14] = ' ';
	if (SPI_execute_plan(taskq_prepare(&upsert_plan,
									   "INSERT INTO taskq.schedules AS s (name, cron, handler, payload, timezone,"
									   " catch_up, priority, queue, max_attempts, timeout, group_key, metadata,"
									   " enabled, next_run_at, owner)"
									   " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,"
									   " $15::pg_catalog.regrole)"
									   " ON CONFLICT (name) DO UPDATE SET cron = excluded.cron,"
									   " handler = excluded.handler, payload = excluded.payload,"
									   " timezone = excluded.timezone, catch_up = excluded.catch_up,"
									   " priority = excluded.priority, queue = excluded.queue,"
									   " max_attempts = excluded.max_attempts, timeout = excluded.timeout,"
									   " group_key = excluded.group_key, metadata = excluded.metadata,"
									   " enabled = excluded.enabled, last_error = NULL,"
									   " next_run_at = CASE WHEN s.enabled"
									   "   AND s.cron OPERATOR(pg_catalog.=) excluded.cron"
									   "   AND s.timezone OPERATOR(pg_catalog.=) excluded.timezone"
									   "   THEN s.next_run_at ELSE excluded.next_run_at END"
									   " WHERE s.owner OPERATOR(pg_catalog.=) excluded.owner",
									   15, types),
						 values, nulls, false, 0) != SPI_OK_INSERT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("schedule \"%s\" was created by another role meanwhile",
						text_to_cstring(PG_GETARG_TEXT_PP(0))),
				 errhint("Retry, or choose another name.")));
}

/*
 * taskq.schedule(name, cron, handler, payload, timezone, catch_up,
 *				  priority, queue, max_attempts, timeout, group_key,
 *				  metadata, enabled): check everything, then insert or
 * update.  The firer is woken at commit, so the change takes effect then.
 */
Datum
taskq_schedule(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *handler;
	TaskqCron	cron;
	pg_tz	   *tz;
	TaskqHandler h;
	Oid			caller = taskq_caller();
	Oid			owner;
	TaskqAsOwner save;
	TimestampTz next_run_at;

	taskq_require_arg(fcinfo, 0, "name", "Pass the schedule's name, which unschedule() will use.");
	taskq_require_arg(fcinfo, 1, "cron", "Pass a cron expression such as '*/5 * * * *', a macro such as '@hourly', or an interval such as '30 seconds'.");
	taskq_require_arg(fcinfo, 2, "handler", "Pass the name of a registered handler.");
	taskq_require_arg(fcinfo, 3, "payload", "Pass '{}' for tasks without a payload.");
	taskq_require_arg(fcinfo, 4, "timezone", "Pass an IANA time zone name such as 'Europe/Paris', or 'UTC'.");
	taskq_require_arg(fcinfo, 5, "catch_up", "Use false (after downtime, one task for the latest missed tick) or true (every missed tick).");
	taskq_require_arg(fcinfo, 12, "enabled", "Use true, or false to keep the schedule without firing it.");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	handler = text_to_cstring(PG_GETARG_TEXT_PP(2));
	taskq_check_name("schedule", name);
	taskq_cron_parse(text_to_cstring(PG_GETARG_TEXT_PP(1)), &cron);
	tz = taskq_cron_zone(text_to_cstring(PG_GETARG_TEXT_PP(4)));
	check_enqueue_options(fcinfo);
	next_run_at = taskq_cron_next(&cron, tz, GetCurrentTransactionStartTimestamp());

	SPI_connect();
	if (!taskq_lookup_handler_locked(handler, &h))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("handler \"%s\" is not registered", handler),
				 errhint("Register it with taskq.register_handler(), or see taskq.handlers for the registered ones.")));
	require_may_enqueue(handler, caller);
	taskq_become_owner(&save);
	owner = schedule_owner(name);
	require_schedule_privilege(name, caller, owner, "update");
	write_schedule(fcinfo, next_run_at, OidIsValid(owner) ? owner : caller);
	taskq_restore_user(&save);
	SPI_finish();

	taskq_request_wakeup_at_commit(TASKQ_WAKE_ALL);
	PG_RETURN_VOID();
}

/* taskq.unschedule(name): true if the schedule existed. */
Datum
taskq_unschedule(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			caller = taskq_caller();
	Oid			owner;
	TaskqAsOwner save;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	taskq_require_arg(fcinfo, 0, "name", "Pass the name of a schedule; see taskq.schedules.");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	values[0] = CStringGetTextDatum(name);

	SPI_connect();
	taskq_become_owner(&save);
	owner = schedule_owner(name);
	require_schedule_privilege(name, caller, owner, "unschedule");
	if (OidIsValid(owner) &&
		SPI_execute_plan(taskq_prepare(&delete_plan,
									   "DELETE FROM taskq.schedules WHERE name OPERATOR(pg_catalog.=) $1",
									   1, types),
						 values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "taskq: could not write taskq.schedules");
	taskq_restore_user(&save);
	SPI_finish();
	PG_RETURN_BOOL(OidIsValid(owner));
}

/*
 * taskq._cron_next(cron, tz, after): the first fire time after `after`.
 * Internal, for tests and for anyone who wants to see when a schedule
 * would fire.
 */
Datum
taskq_cron_next_sql(PG_FUNCTION_ARGS)
{
	TaskqCron	cron;
	pg_tz	   *tz;
	TimestampTz after = PG_GETARG_TIMESTAMPTZ(2);

	taskq_cron_parse(text_to_cstring(PG_GETARG_TEXT_PP(0)), &cron);
	tz = taskq_cron_zone(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	if (TIMESTAMP_NOT_FINITE(after))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("after must be a finite time"),
				 errhint("Pass an instant such as now().")));
	PG_RETURN_TIMESTAMPTZ(taskq_cron_next(&cron, tz, after));
}

/*
 * unregister_handler() (handlers.c) drops the handler's schedules with it,
 * so that a handler registered later under the name, by any role, never
 * receives their ticks.  Runs as the table owner; returns how many.
 */
uint64
taskq_schedules_drop_handler(const char *handler)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(handler)};

	if (SPI_execute_plan(taskq_prepare(&drop_plan,
									   "DELETE FROM taskq.schedules WHERE handler OPERATOR(pg_catalog.=) $1",
									   1, types),
						 values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "taskq: could not write taskq.schedules");
	return SPI_processed;
}

/* ----------------------------------------------------------------
 * The tick
 * ----------------------------------------------------------------
 */

/*
 * Which dispatcher fires schedules: exactly one per database, the first
 * dispatcher (index 0) of the first executor that has any: "default"
 * unless taskq.workers = 0, then the first executor taskq.executors
 * names.  Every executor numbers its dispatchers from 0, so the index
 * alone would make one firer per executor.
 */
bool
taskq_schedules_firer(int slot_index, const char *executor)
{
	int			i;

	if (slot_index != 0)
		return false;
	for (i = 0; i < taskq_pool_count(); i++)
		if (taskq_pool_workers(i) > 0)
			return strcmp(taskq_pool_name(i), executor) == 0;
	return false;
}

/* The ISO 8601 form of a tick in UTC, for the task's metadata. */
static char *
iso_utc(TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "taskq: tick time out of range");
	if (fsec == 0)
		return psprintf("%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year, tm.tm_mon,
						tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year, tm.tm_mon,
					tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

/*
 * Read the due schedules (at most TICK_SCHEDULES), locking them; rows
 * someone else holds (a schedule() or unschedule() in progress) are
 * skipped and looked at again when that commits or soon after.
 */
static int
read_due(TimestampTz now, DueSchedule **out)
{
	Oid			types[1] = {TIMESTAMPTZOID};
	Datum		values[1] = {TimestampTzGetDatum(now)};
	DueSchedule *rows;
	uint64		i;

	if (SPI_execute_plan(taskq_prepare(&due_plan,
									   "SELECT name, cron, timezone, catch_up, next_run_at, owner::pg_catalog.oid,"
									   " handler, payload, priority, queue, max_attempts, timeout, metadata, group_key"
									   " FROM taskq.schedules"
									   " WHERE enabled AND next_run_at OPERATOR(pg_catalog.<=) $1"
									   " ORDER BY next_run_at LIMIT " CppAsString2(TICK_SCHEDULES)
									   " FOR UPDATE SKIP LOCKED",
									   1, types),
						 values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.schedules");
	rows = palloc0(sizeof(DueSchedule) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_copytuple(SPI_tuptable->vals[i]);
		TupleDesc	desc = SPI_tuptable->tupdesc;
		DueSchedule *r = &rows[i];
		bool		isnull;
		int			k;

		r->name = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
		r->cron = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		r->timezone = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		r->catch_up = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
		r->next_run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
		r->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 6, &isnull));
		for (k = 0; k < 8; k++)
		{
			r->values[k] = SPI_getbinval(tup, desc, 7 + k, &isnull);
			r->nulls[k] = isnull ? 'n' : ' ';
		}
	}
	*out = rows;
	return (int) SPI_processed;
}

/*
 * The ticks of a due schedule to fire now, oldest first, in ticks[] (at
 * most CATCH_UP_MAX); returns how many, and in *next the schedule's next
 * fire time after them.  Without catch_up only the latest tick due by now
 * fires; the earlier missed ones are skipped.
 */
static int
ticks_to_fire(const DueSchedule *r, TimestampTz now, TimestampTz *ticks, TimestampTz *next)
{
	TaskqCron	cron;
	pg_tz	   *tz;
	TimestampTz t = r->next_run_at;
	int			n = 0;

	taskq_cron_parse(r->cron, &cron);
	tz = taskq_cron_zone(r->timezone);
	if (r->catch_up)
	{
		while (n < CATCH_UP_MAX && t <= now)
		{
			ticks[n++] = t;
			t = taskq_cron_next(&cron, tz, t);
		}
		*next = t;
		return n;
	}

	/*
	 * The latest tick due by now.  After a long downtime, look back from
	 * now in growing windows instead of stepping through every tick
	 * missed (a '1 second' schedule down for a day).
	 */
	{
		static const int64 windows_s[] = {60, 3600, 86400, 32 * 86400, 367 * 86400};
		int			w;

		for (w = 0; w < (int) lengthof(windows_s); w++)
		{
			TimestampTz from = now - windows_s[w] * USECS_PER_SEC;
			TimestampTz c;

			if (from <= t)
				break;
			c = taskq_cron_next(&cron, tz, from);
			if (c <= now)
			{
				t = c;
				break;
			}
		}
	}
	for (;;)
	{
		TimestampTz c = taskq_cron_next(&cron, tz, t);

		if (c > now)
		{
			ticks[0] = t;
			*next = c;
			return 1;
		}
		t = c;
	}
}

/*
 * Enqueue the ticks as the schedule's owner and advance the schedule.
 * The caller runs this in a subtransaction.
 */
#define FIRE_SQL \
	"SELECT taskq.enqueue(handler => $1, payload => $2, priority => $3, queue => $4," \
	" max_attempts => $5, timeout => $6, mode => 'async'," \
	" metadata => COALESCE($7, '{}'::pg_catalog.jsonb) OPERATOR(pg_catalog.||)" \
	"   pg_catalog.jsonb_build_object('schedule', $9, 'scheduled_for', $10)," \
	" group_key => $8)"

/*
 * Enqueue the ticks of one schedule, as its owner, and advance it, in the
 * caller's subtransaction: the tasks and the new next_run_at commit together.
 */
static void
fire(DueSchedule *r, const TimestampTz *ticks, int n, TimestampTz next)
{
	Oid			types[10] = {TEXTOID, JSONBOID, INT4OID, TEXTOID, INT4OID, INTERVALOID,
	JSONBOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[10];
	char		nulls[10];
	Oid			atypes[4] = {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID};
	Datum		avalues[4];
	char		anulls[4] = {' ', ' ', ' ', ' '};
	Oid			save_userid;
	int			save_sec;
	bool		isnull = true;
	Datum		id = (Datum) 0;
	int			i;

	memcpy(values, r->values, sizeof(r->values));
	memcpy(nulls, r->nulls, sizeof(r->nulls));
	values[8] = CStringGetTextDatum(r->name);
	nulls[8] = nulls[9] = ' ';
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(r->owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	for (i = 0; i < n; i++)
	{
		values[9] = CStringGetTextDatum(iso_utc(ticks[i]));
		if (SPI_execute_plan(taskq_prepare(&fire_plan, FIRE_SQL, 10, types),
							 values, nulls, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "taskq: could not enqueue the tick of schedule \"%s\"", r->name);
		id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	}
	SetUserIdAndSecContext(save_userid, save_sec);

	avalues[0] = CStringGetTextDatum(r->name);
	avalues[1] = TimestampTzGetDatum(next);
	avalues[2] = TimestampTzGetDatum(ticks[n - 1]);
	avalues[3] = id;
	anulls[3] = isnull ? 'n' : ' ';
	if (SPI_execute_plan(taskq_prepare(&advance_plan,
									   "UPDATE taskq.schedules SET next_run_at = $2, last_run_at = $3,"
									   " last_task_id = $4, last_error = NULL"
									   " WHERE name OPERATOR(pg_catalog.=) $1",
									   4, atypes),
						 avalues, anulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "taskq: could not advance schedule \"%s\"", r->name);
}

/*
 * A tick that enqueue refused (the owner lost its privilege, a policy of
 * assert_none, a tick time out of range...): the tick is spent, the error
 * kept on the schedule and logged, and the schedule moves on.
 */
static void
record_failure(DueSchedule *r, TimestampTz next, const char *error)
{
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, TEXTOID};
	Datum		values[3];

	ereport(WARNING,
			(errmsg("taskq: schedule \"%s\" could not enqueue its tick: %s", r->name, error)));
	values[0] = CStringGetTextDatum(r->name);
	values[1] = TimestampTzGetDatum(next);
	values[2] = CStringGetTextDatum(error);
	if (SPI_execute_plan(taskq_prepare(&failed_plan,
									   "UPDATE taskq.schedules SET next_run_at = $2, last_error = $3"
									   " WHERE name OPERATOR(pg_catalog.=) $1",
									   3, types),
						 values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "taskq: could not advance schedule \"%s\"", r->name);
}

/*
 * Fire one due schedule in a subtransaction: its ticks and its advance
 * commit together, or neither and the failure is recorded.  Returns
 * whether it is still behind (catch_up capped by CATCH_UP_MAX).
 */
static bool
fire_one(DueSchedule *r, TimestampTz now)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	TimestampTz ticks[CATCH_UP_MAX];
	volatile TimestampTz next = DT_NOEND;
	volatile int n = 0;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		TimestampTz nx;

		n = ticks_to_fire(r, now, ticks, &nx);
		next = nx;
		fire(r, ticks, n, nx);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (next == DT_NOEND)
			next = TimestampTzPlusMilliseconds(now, 60 * 1000);	/* retry it in a minute */
		record_failure(r, next, edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return next <= now;
}

/* The earliest next_run_at of an enabled schedule, or DT_NOEND. */
static TimestampTz
read_next(void)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute_plan(taskq_prepare(&next_plan,
									   "SELECT pg_catalog.min(next_run_at) FROM taskq.schedules WHERE enabled",
									   0, NULL),
						 NULL, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "taskq: could not read taskq.schedules");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? DT_NOEND : DatumGetTimestampTz(d);
}

/*
 * Fire the due schedules (at most TICK_SCHEDULES of them) in the current
 * transaction; SPI is connected.  Returns how many were due; *behind
 * says whether one of them is still behind (catch_up capped).
 */
static int
fire_due(TimestampTz now, bool *behind)
{
	DueSchedule *rows;
	int			n = read_due(now, &rows);
	int			i;

	*behind = false;
	for (i = 0; i < n; i++)
		*behind |= fire_one(&rows[i], now);
	return n;
}

/*
 * The dispatcher's hook, called before each of its claims: if this
 * dispatcher is the firer, fire the due schedules (one transaction, at
 * most TICK_SCHEDULES of them) and return when to call again: now if some
 * are left, else the earliest next_run_at.  Others get DT_NOEND.  Runs
 * outside any transaction, in the order of the dispatcher's own.
 *
 * While a backlog drains the dispatcher claims many times a second, and
 * every commit that enqueues wakes it; the schedules are looked at when
 * one is due and otherwise at most every TICK_GAP_MS, so that a
 * schedule() that commits (and wakes us) takes effect within that.
 */
TimestampTz
taskq_schedules_tick(int slot_index, const char *executor)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next;
	bool		behind;
	int			n;

	if (!taskq_schedules_firer(slot_index, executor))
		return DT_NOEND;
	if (now < next_known &&
		!TimestampDifferenceExceeds(last_look, now, TICK_GAP_MS))
		return Min(next_known, TimestampTzPlusMilliseconds(last_look, TICK_GAP_MS));
	last_look = now;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (!OidIsValid(get_extension_oid("taskq", true)))
	{
		CommitTransactionCommand();
		return DT_NOEND;		/* the dispatcher's claim notices and exits */
	}
	if (!said_firer)
	{
		ereport(LOG,
				(errmsg("taskq dispatcher %d of executor \"%s\" fires the schedules of database \"%s\"",
						slot_index, executor, get_database_name(MyDatabaseId))));
		said_firer = true;
	}
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "taskq: schedules");
	n = fire_due(GetCurrentTimestamp(), &behind);
	next = read_next();
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);

	now = GetCurrentTimestamp();
	if (n == TICK_SCHEDULES || behind)
		next = now;
	else if (next <= now)		/* due but locked by someone */
		next = TimestampTzPlusMilliseconds(now, LOCKED_RETRY_MS);
	next_known = next;
	return next;
}

/*
 * taskq._tick(): one firer's pass in the caller's transaction, as the
 * dispatcher runs it; returns how many schedules were due and not locked.
 * Internal (superusers only), for tests of concurrent firing.
 */
Datum
taskq_tick_sql(PG_FUNCTION_ARGS)
{
	bool		behind;
	int			n;
	int			gucnest;

	SPI_connect();
	gucnest = taskq_restrict_search_path();
	n = fire_due(GetCurrentTimestamp(), &behind);
	taskq_restore_search_path(gucnest);
	SPI_finish();
	PG_RETURN_INT32(n);
}
