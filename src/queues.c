/*-------------------------------------------------------------------------
 *
 * queues.c
 *	  taskq.set_queue(): a queue's limits, their validation, and the
 *	  parsing of rate limits.
 *
 * The limits live in taskq.queues, next to paused.  set_queue() replaces
 * all of them at once (NULL: no limit) and keeps paused; it writes in the
 * caller's transaction, so the limits take effect at its commit, when the
 * dispatchers are woken to look again.  The claim that enforces them is
 * taskq._claim_queue() (src/limited.c), which external claims call as
 * dispatchers do.
 *
 * Who may call it: as pause() and resume(), superusers and the roles they
 * grant EXECUTE; it runs as the owner of taskq.tasks.
 *
 * It calls common.c and shmem.c only.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(taskq_set_queue);

#define TASKQ_RATE_MAX_COUNT	1000000
#define TASKQ_RATE_MAX_MS		((int64) 24 * 3600 * 1000)	/* one day */

static SPIPlanPtr reset_buckets_plan = NULL;
static SPIPlanPtr set_queue_plan = NULL;

/* A rate limit, parsed: count starts per period_ms, and its canonical text. */
typedef struct TaskqRate
{
	int			count;
	int64		period_ms;
	char	   *text;
} TaskqRate;

/* The units a rate's interval may use, with their length in ms. */
static const struct
{
	const char *name;
	int64		ms;
}			rate_units[] =
{
	{"ms", 1},
	{"s", 1000},
	{"min", 60 * 1000},
	{"h", 3600 * 1000},
};

/* Refuse a rate limit's text, saying what is wrong with it and how to write one. */
static void
bad_rate(const char *what, const char *value, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 problem ?
			 errmsg("invalid %s \"%s\": %s", what, value, problem) :
			 errmsg("invalid %s \"%s\"", what, value),
			 errdetail("A rate limit is a number of task starts per interval, written N/interval."),
			 errhint("Write it as '100/1s' or '5/1min': N from 1 to %d, an interval from 1 ms to 24 h in ms, s, min or h; or NULL for no limit.",
					 TASKQ_RATE_MAX_COUNT)));
}

/*
 * Parse "N/interval", interval being an optional whole number (1 when
 * left out) and a unit: '100/1s', '5/min', '10/250ms'.  A strict syntax
 * of our own rather than the interval type's, whose '1 mon' has no fixed
 * length and whose '0.5 s' would hide rounding.
 */
static void
parse_rate(const char *what, const char *value, TaskqRate *rate)
{
	const char *p = value;
	char	   *end;
	long		count;
	long		mult = 1;
	int			i;

	if (!isdigit((unsigned char) *p) && *p != '-' && *p != '+')
		bad_rate(what, value, NULL);
	errno = 0;
	count = strtol(p, &end, 10);
	if (end == p || *end != '/')
		bad_rate(what, value, NULL);
	if (errno != 0 || count < 1 || count > TASKQ_RATE_MAX_COUNT)
		bad_rate(what, value, psprintf("the number of starts must be 1 to %d", TASKQ_RATE_MAX_COUNT));
	p = end + 1;
	if (isdigit((unsigned char) *p))
	{
		errno = 0;
		mult = strtol(p, &end, 10);
		if (errno != 0 || mult > TASKQ_RATE_MAX_MS)
			bad_rate(what, value, "the interval must be from 1 ms to 24 h");
		p = end;
	}
	else if (*p == '-' || *p == '+')
		bad_rate(what, value, "the interval must be from 1 ms to 24 h");
	for (i = 0; i < (int) lengthof(rate_units); i++)
	{
		if (strcmp(p, rate_units[i].name) == 0)
			break;
	}
	if (i == (int) lengthof(rate_units))
		bad_rate(what, value, NULL);
	if (mult < 1 || mult * rate_units[i].ms > TASKQ_RATE_MAX_MS)
		bad_rate(what, value, "the interval must be from 1 ms to 24 h");
	rate->count = (int) count;
	rate->period_ms = mult * rate_units[i].ms;
	rate->text = psprintf("%ld/%ld%s", count, mult, rate_units[i].name);
}

/* An optional limit on how many tasks run at once: NULL, or at least 1. */
static void
limit_arg(FunctionCallInfo fcinfo, int n, const char *what, Datum *value, char *null)
{
	int			limit;

	*null = PG_ARGISNULL(n) ? 'n' : ' ';
	*value = (Datum) 0;
	if (PG_ARGISNULL(n))
		return;
	limit = PG_GETARG_INT32(n);
	if (limit < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at least 1, not %d", what, limit),
				 errhint("Pass the number of tasks that may run at once, or NULL for no limit.")));
	*value = Int32GetDatum(limit);
}

/* An optional rate limit into its three columns: text, count, period. */
static void
rate_arg(FunctionCallInfo fcinfo, int n, const char *what, Datum *values, char *nulls)
{
	TaskqRate	rate;
	Interval   *period;

	memset(nulls, PG_ARGISNULL(n) ? 'n' : ' ', 3);
	values[0] = values[1] = values[2] = (Datum) 0;
	if (PG_ARGISNULL(n))
		return;
	parse_rate(what, text_to_cstring(PG_GETARG_TEXT_PP(n)), &rate);
	period = palloc0(sizeof(Interval));
	period->time = rate.period_ms * 1000;
	values[0] = CStringGetTextDatum(rate.text);
	values[1] = Int32GetDatum(rate.count);
	values[2] = IntervalPGetDatum(period);
}

/* aging: NULL, or a positive interval of fixed length. */
static void
aging_arg(FunctionCallInfo fcinfo, int n, Datum *value, char *null)
{
	*null = PG_ARGISNULL(n) ? 'n' : ' ';
	*value = (Datum) 0;
	if (PG_ARGISNULL(n))
		return;
	(void) taskq_interval_ms("aging", PG_GETARG_INTERVAL_P(n), false);
	*value = PG_GETARG_DATUM(n);
}

#define SET_QUEUE_SQL \
	"INSERT INTO taskq.queues AS q (name, concurrency, group_concurrency," \
	" rate_limit, rate_count, rate_period, group_rate_limit, group_rate_count, group_rate_period, aging)" \
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)" \
	" ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency," \
	"  group_concurrency = excluded.group_concurrency," \
	"  rate_limit = excluded.rate_limit, rate_count = excluded.rate_count," \
	"  rate_period = excluded.rate_period," \
	"  group_rate_limit = excluded.group_rate_limit, group_rate_count = excluded.group_rate_count," \
	"  group_rate_period = excluded.group_rate_period, aging = excluded.aging," \
	"  tokens = CASE WHEN q.rate_limit IS NOT DISTINCT FROM excluded.rate_limit THEN q.tokens END," \
	"  refilled_at = CASE WHEN q.rate_limit IS NOT DISTINCT FROM excluded.rate_limit THEN q.refilled_at END," \
	"  held_until = NULL"

/*
 * Write the settings.  A changed group_rate_limit starts every group's
 * bucket full again (an unchanged one keeps them, so that calling
 * set_queue() again is no way around the limit); so does rate_limit.
 */
static void
write_queue(Datum *values, char *nulls)
{
	Oid			types[10] = {TEXTOID, INT4OID, INT4OID, TEXTOID, INT4OID, INTERVALOID,
	TEXTOID, INT4OID, INTERVALOID, INTERVALOID};
	Oid			reset_types[2] = {TEXTOID, TEXTOID};
	Datum		reset_values[2] = {values[0], values[6]};
	char		reset_nulls[2] = {' ', nulls[6]};
	TaskqAsOwner save;

	SPI_connect();
	taskq_become_owner(&save);
	if (SPI_execute_plan(taskq_prepare(&reset_buckets_plan,
									   "DELETE FROM taskq.group_buckets b WHERE b.queue OPERATOR(pg_catalog.=) $1"
									   " AND $2 IS DISTINCT FROM (SELECT q.group_rate_limit FROM taskq.queues q"
									   "   WHERE q.name OPERATOR(pg_catalog.=) $1)",
									   2, reset_types),
						 reset_values, reset_nulls, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "taskq: resetting the group buckets failed");
	if (SPI_execute_plan(taskq_prepare(&set_queue_plan, SET_QUEUE_SQL, 10, types),
						 values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "taskq: writing the queue's settings failed");
	taskq_restore_user(&save);
	SPI_finish();
}

/*
 * taskq.set_queue(name, concurrency, group_concurrency, rate_limit,
 *				   group_rate_limit, aging): check every argument, in order,
 * before writing anything.
 */
Datum
taskq_set_queue(PG_FUNCTION_ARGS)
{
	Datum		values[10];
	char		nulls[10];
	char	   *name;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue must not be NULL"),
				 errhint("Pass a queue name, such as 'default'.")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	taskq_check_name("queue", name);
	values[0] = CStringGetTextDatum(name);
	nulls[0] = ' ';
	limit_arg(fcinfo, 1, "concurrency", &values[1], &nulls[1]);
	limit_arg(fcinfo, 2, "group_concurrency", &values[2], &nulls[2]);
	rate_arg(fcinfo, 3, "rate_limit", &values[3], &nulls[3]);
	rate_arg(fcinfo, 4, "group_rate_limit", &values[6], &nulls[6]);
	aging_arg(fcinfo, 5, &values[9], &nulls[9]);
	write_queue(values, nulls);
	taskq_request_wakeup_at_commit(TASKQ_WAKE_ALL);
	PG_RETURN_VOID();
}
