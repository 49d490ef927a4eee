/*-------------------------------------------------------------------------
 *
 * cron.c
 *	  Recurring schedules' text: parsing cron expressions and intervals,
 *	  and computing the next fire time after an instant.
 *
 * Pure functions: no SPI, no catalog access, nothing but the text, the
 * time zone (pg_tzset) and the instant given, so that regress can check
 * every case through taskq._cron_next() (schedules.c).
 *
 * A cron expression is matched in the schedule's local wall-clock time,
 * minute by minute; each matching local minute is then turned into an
 * instant.  A local time that the zone skips (spring forward) fires at
 * the first instant after the gap; one that occurs twice (fall back)
 * fires once, at its first occurrence.  An interval schedule ('30
 * seconds') fires at the multiples of its period since the Unix epoch,
 * whatever the zone.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include <ctype.h>

#include "pgtime.h"
#include "utils/datetime.h"

#define USECS_PER_MINUTE	INT64CONST(60000000)
#define MINUTES_PER_DAY		1440
#define SEARCH_YEARS		9	/* long enough to meet every 29 February */

static const char *const field_names[5] = {
	"minute", "hour", "day-of-month", "month", "day-of-week"
};
static const int field_min[5] = {0, 0, 1, 1, 0};
static const int field_max[5] = {59, 23, 31, 12, 7};
static const char *const field_hints[5] = {
	"Minutes are 0-59.",
	"Hours are 0-23.",
	"Days of the month are 1-31.",
	"Months are 1-12 or jan-dec.",
	"Days of the week are 0-7 (0 and 7 are Sunday) or sun-sat."
};
static const char *const month_names[12] = {
	"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"
};
static const char *const day_names[7] = {
	"sun", "mon", "tue", "wed", "thu", "fri", "sat"
};

#define CRON_HINT \
	"A cron expression has five fields: minute hour day-of-month month day-of-week, " \
	"such as '*/5 * * * *'; or use @yearly, @monthly, @weekly, @daily or @hourly, " \
	"or an interval such as '30 seconds'."

/* Where parsing is: the whole text, for messages, and the cursor. */
typedef struct CronParser
{
	const char *text;
	const char *p;
} CronParser;

static int64 next_local_minute(const TaskqCron *cron, int64 m);

/* Refuse the text, naming what is wrong and where (1-based). */
static void
cron_error(CronParser *ps, const char *at, const char *hint, const char *fmt,...)
pg_attribute_printf(4, 5);

static void
cron_error(CronParser *ps, const char *at, const char *hint, const char *fmt,...)
{
	char		what[256];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid cron expression \"%s\": %s at position %d",
					ps->text, what, (int) (at - ps->text) + 1),
			 errhint("%s", hint ? hint : CRON_HINT)));
}

/* ----------------------------------------------------------------
 * Parsing
 * ----------------------------------------------------------------
 */

/*
 * A number or, in the month and day-of-week fields, a name (jan, mon...).
 * Leaves the cursor after it.
 */
static int
parse_value(CronParser *ps, int field)
{
	const char *start = ps->p;

	if (isdigit((unsigned char) *ps->p))
	{
		long		v = 0;

		while (isdigit((unsigned char) *ps->p))
		{
			if (v < 1000)
				v = v * 10 + (*ps->p - '0');
			ps->p++;
		}
		if (v < field_min[field] || v > field_max[field])
			cron_error(ps, start, field_hints[field], "%s %.*s is out of range",
					   field_names[field], (int) (ps->p - start), start);
		return (int) v;
	}
	if (isalpha((unsigned char) *ps->p))
	{
		const char *const *names = field == 3 ? month_names : day_names;
		int			n = field == 3 ? 12 : 7;
		int			i;

		while (isalpha((unsigned char) *ps->p))
			ps->p++;
		if (field == 3 || field == 4)
		{
			for (i = 0; i < n; i++)
				if (ps->p - start == 3 && pg_strncasecmp(start, names[i], 3) == 0)
					return field == 3 ? i + 1 : i;
		}
		cron_error(ps, start, field_hints[field], "unknown %s name \"%.*s\"",
				   field_names[field], (int) (ps->p - start), start);
	}
	if (*ps->p == '\0' || *ps->p == ' ' || *ps->p == '\t' || *ps->p == ',')
		cron_error(ps, start, field_hints[field], "missing %s value", field_names[field]);
	cron_error(ps, start, field_hints[field], "unexpected character \"%c\"", *ps->p);
	return 0;					/* keep compiler quiet */
}

/*
 * One list item: *, a value, or a range, each with an optional /step.
 * Sets its bits in *bits.
 */
static void
parse_item(CronParser *ps, int field, uint64 *bits)
{
	const char *start = ps->p;
	int			lo,
				hi,
				step = 1,
				v;
	bool		ranged = true;

	if (*ps->p == '*')
	{
		ps->p++;
		lo = field_min[field];
		hi = field == 4 ? 6 : field_max[field];
	}
	else
	{
		lo = hi = parse_value(ps, field);
		ranged = false;
		if (*ps->p == '-')
		{
			ps->p++;
			hi = parse_value(ps, field);
			ranged = true;
			if (hi < lo)
				cron_error(ps, start, "Write the smaller value first; use a list such as '22,23,0,1' for a range across the end.",
						   "range %.*s ends before it starts", (int) (ps->p - start), start);
		}
	}
	if (*ps->p == '/')
	{
		const char *at = ++ps->p;
		long		s = 0;

		if (!ranged)
			cron_error(ps, at - 1, "Write a step after * or a range, such as '*/15' or '0-30/10'.",
					   "step without a range");
		if (!isdigit((unsigned char) *ps->p))
			cron_error(ps, at, "Write a step as a number of at least 1, such as '*/15'.",
					   "missing step");
		while (isdigit((unsigned char) *ps->p))
		{
			if (s < 1000)
				s = s * 10 + (*ps->p - '0');
			ps->p++;
		}
		if (s == 0)
			cron_error(ps, at, "Write a step as a number of at least 1, such as '*/15'.",
					   "step 0");
		if (s > field_max[field])
			cron_error(ps, at, field_hints[field], "step %ld is larger than the %s field allows",
					   s, field_names[field]);
		step = (int) s;
	}
	for (v = lo; v <= hi; v += step)
		*bits |= UINT64CONST(1) << (field == 4 && v == 7 ? 0 : v);
}

/* One field: a comma list of items, up to the next blank or the end. */
static uint64
parse_field(CronParser *ps, int field, bool *star)
{
	uint64		bits = 0;

	*star = (*ps->p == '*');
	for (;;)
	{
		parse_item(ps, field, &bits);
		if (*ps->p == ',')
		{
			ps->p++;
			if (*ps->p == ',' || *ps->p == '\0' || *ps->p == ' ' || *ps->p == '\t')
				cron_error(ps, ps->p, field_hints[field], "empty list item");
			continue;
		}
		if (*ps->p == '\0' || *ps->p == ' ' || *ps->p == '\t')
			return bits;
		cron_error(ps, ps->p, field_hints[field], "unexpected character \"%c\"", *ps->p);
	}
}

/* Fields are separated by spaces or tabs, as crontab(5) allows. */
static void
skip_blanks(CronParser *ps)
{
	while (*ps->p == ' ' || *ps->p == '\t')
		ps->p++;
}

/* The five fields of a standard expression. */
static void
parse_fields(CronParser *ps, TaskqCron *cron)
{
	uint64		bits[5];
	bool		star[5];
	int			f;

	for (f = 0; f < 5; f++)
	{
		skip_blanks(ps);
		if (*ps->p == '\0')
			cron_error(ps, ps->p, NULL, "missing %s field", field_names[f]);
		bits[f] = parse_field(ps, f, &star[f]);
	}
	skip_blanks(ps);
	if (*ps->p != '\0')
		cron_error(ps, ps->p, NULL, "unexpected sixth field");
	cron->minutes = bits[0];
	cron->hours = (uint32) bits[1];
	cron->mdays = (uint32) bits[2];
	cron->months = (uint16) bits[3];
	cron->wdays = (uint8) bits[4];
	cron->dom_star = star[2];
	cron->dow_star = star[4];
}

/* @yearly and friends, as the expressions they stand for. */
static const char *
expand_macro(CronParser *ps)
{
	static const struct
	{
		const char *name;
		const char *expr;
	}			macros[] = {
		{"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"},
		{"@monthly", "0 0 1 * *"}, {"@weekly", "0 0 * * 0"},
		{"@daily", "0 0 * * *"}, {"@midnight", "0 0 * * *"},
		{"@hourly", "0 * * * *"}
	};
	const char *end = ps->p;
	int			i;

	while (*end && *end != ' ' && *end != '\t')
		end++;
	for (i = 0; i < (int) lengthof(macros); i++)
		if ((size_t) (end - ps->p) == strlen(macros[i].name) &&
			pg_strncasecmp(ps->p, macros[i].name, end - ps->p) == 0)
			break;
	if (i == (int) lengthof(macros))
		cron_error(ps, ps->p, "Use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly.",
				   "unknown macro \"%.*s\"", (int) (end - ps->p), ps->p);
	ps->p = end;
	skip_blanks(ps);
	if (*ps->p != '\0')
		cron_error(ps, ps->p, "A macro stands alone, such as '@daily'.", "unexpected text after the macro");
	return macros[i].expr;
}

/*
 * Whether the text reads as an interval: a number, blanks, and a word.
 * Anything else is parsed as cron, whose errors say more.
 */
static bool
looks_like_interval(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	if (!isdigit((unsigned char) *p))
		return false;
	while (isdigit((unsigned char) *p))
		p++;
	while (*p == ' ' || *p == '\t')
		p++;
	return isalpha((unsigned char) *p);
}

/* '<n> <unit>': seconds, minutes, hours or days, 1 second to 1 day. */
static void
parse_interval(CronParser *ps, TaskqCron *cron)
{
	static const struct
	{
		const char *name;
		int64		secs;
	}			units[] = {
		{"s", 1}, {"sec", 1}, {"secs", 1}, {"second", 1}, {"seconds", 1},
		{"min", 60}, {"mins", 60}, {"minute", 60}, {"minutes", 60},
		{"h", 3600}, {"hour", 3600}, {"hours", 3600},
		{"day", 86400}, {"days", 86400}
	};
	const char *num;
	const char *unit;
	int64		n = 0;
	int			i;

	skip_blanks(ps);
	num = ps->p;
	while (isdigit((unsigned char) *ps->p))
	{
		if (n < 1000000000)
			n = n * 10 + (*ps->p - '0');
		ps->p++;
	}
	skip_blanks(ps);
	unit = ps->p;
	while (isalpha((unsigned char) *ps->p))
		ps->p++;
	for (i = 0; i < (int) lengthof(units); i++)
		if ((size_t) (ps->p - unit) == strlen(units[i].name) &&
			pg_strncasecmp(unit, units[i].name, ps->p - unit) == 0)
			break;
	if (i == (int) lengthof(units))
		cron_error(ps, unit, "Use seconds, minutes, hours or days, such as '30 seconds'.",
				   "unknown interval unit \"%.*s\"", (int) (ps->p - unit), unit);
	skip_blanks(ps);
	if (*ps->p != '\0')
		cron_error(ps, ps->p, "An interval is one number and one unit, such as '90 seconds'.",
				   "unexpected text after the interval");
	if (n * units[i].secs < 1 || n * units[i].secs > 86400)
		cron_error(ps, num, "An interval schedule runs every 1 second to 1 day.",
				   "interval out of range");
	cron->interval_us = n * units[i].secs * USECS_PER_SEC;
}

/*
 * Parse a schedule's text into *cron, or refuse it with the position of
 * the first error and a hint.
 */
void
taskq_cron_parse(const char *text, TaskqCron *cron)
{
	CronParser	ps = {text, text};

	memset(cron, 0, sizeof(*cron));
	skip_blanks(&ps);
	if (*ps.p == '\0')
		cron_error(&ps, ps.p, NULL, "empty expression");
	if (*ps.p == '@')
	{
		CronParser	expanded;

		expanded.text = expanded.p = expand_macro(&ps);
		parse_fields(&expanded, cron);
	}
	else if (looks_like_interval(ps.p))
		parse_interval(&ps, cron);
	else
		parse_fields(&ps, cron);
	if (cron->interval_us == 0 && next_local_minute(cron, 0) < 0)
		cron_error(&ps, text, "Check the day-of-month and month fields: a date such as 30 February never occurs.",
				   "no date matches");
}

/* ----------------------------------------------------------------
 * Time zones
 * ----------------------------------------------------------------
 */

/*
 * The zone of that IANA name (or POSIX spec that PostgreSQL accepts), or
 * an error naming it.
 */
pg_tz *
taskq_cron_zone(const char *name)
{
	pg_tz	   *tz = name[0] ? pg_tzset(name) : NULL;

	if (tz == NULL || !pg_tz_acceptable(tz))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown time zone \"%s\"", name),
				 errhint("Use an IANA time zone name such as 'Europe/Paris' or 'America/New_York'; see pg_timezone_names.")));
	return tz;
}

/* Seconds east of UTC in the zone at an instant. */
static long
zone_offset(TimestampTz t, const pg_tz *tz)
{
	pg_time_t	tt = (pg_time_t) (t / USECS_PER_SEC -
								  (t % USECS_PER_SEC < 0 ? 1 : 0)) +
		(pg_time_t) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
	struct pg_tm *tm = pg_localtime(&tt, tz);

	return tm ? tm->tm_gmtoff : 0;
}

/*
 * The instant at which a local wall-clock time (µs since 2000-01-01 in
 * local time) fires: its only instant; the first of two (fall back); or,
 * for a time the zone skips (spring forward), the first instant after
 * the gap.  Zones change offset at most once in two days.
 */
static TimestampTz
local_to_instant(int64 local, const pg_tz *tz)
{
	long		before = zone_offset(local - USECS_PER_DAY, tz);
	long		after = zone_offset(local + USECS_PER_DAY, tz);
	TimestampTz ta = local - before * USECS_PER_SEC;
	TimestampTz tb = local - after * USECS_PER_SEC;
	bool		a_ok = zone_offset(ta, tz) == before;
	bool		b_ok = zone_offset(tb, tz) == after;
	TimestampTz lo,
				hi;

	if (a_ok && b_ok)
		return Min(ta, tb);
	if (a_ok)
		return ta;
	if (b_ok)
		return tb;

	/* in a gap: find the transition, to the second */
	lo = Min(ta, tb);
	hi = Max(ta, tb);
	while (hi - lo > USECS_PER_SEC)
	{
		TimestampTz mid = lo + (hi - lo) / 2;

		if (zone_offset(mid, tz) == zone_offset(lo, tz))
			lo = mid;
		else
			hi = mid;
	}
	return hi - hi % USECS_PER_SEC;
}

/* ----------------------------------------------------------------
 * The next fire time
 * ----------------------------------------------------------------
 */

/* Vixie cron's day rule: both day fields restricted means either matches. */
static bool
day_matches(const TaskqCron *cron, int jd, int mday)
{
	bool		dom = (cron->mdays & (((uint32) 1) << mday)) != 0;
	bool		dow = (cron->wdays & (1 << j2day(jd))) != 0;

	if (cron->dom_star || cron->dow_star)
		return dom && dow;
	return dom || dow;
}

/*
 * The first local minute at or after local minute m (minutes since
 * 2000-01-01 local) that the expression matches, or -1 if none within
 * SEARCH_YEARS (such as '0 0 30 2 *').  Skips whole months, days and
 * hours that cannot match.
 */
static int64
next_local_minute(const TaskqCron *cron, int64 m)
{
	int			jd = POSTGRES_EPOCH_JDATE + (int) (m / MINUTES_PER_DAY);
	int			minute_of_day = (int) (m % MINUTES_PER_DAY);
	int			last_jd = jd + SEARCH_YEARS * 366;

	for (; jd <= last_jd; jd++, minute_of_day = 0)
	{
		int			year,
					mon,
					mday,
					hour,
					minute;

		j2date(jd, &year, &mon, &mday);
		if (!(cron->months & (1 << mon)))
		{
			jd = date2j(mon == 12 ? year + 1 : year, mon == 12 ? 1 : mon + 1, 1) - 1;
			continue;
		}
		if (!day_matches(cron, jd, mday))
			continue;
		for (hour = minute_of_day / 60; hour < 24; hour++)
		{
			if (!(cron->hours & (((uint32) 1) << hour)))
				continue;
			minute = hour == minute_of_day / 60 ? minute_of_day % 60 : 0;
			for (; minute < 60; minute++)
				if (cron->minutes & (UINT64CONST(1) << minute))
					return (int64) (jd - POSTGRES_EPOCH_JDATE) * MINUTES_PER_DAY + hour * 60 + minute;
		}
	}
	return -1;
}

/*
 * The first fire time strictly after the instant `after`, in zone tz
 * (ignored by intervals).  Errors if the expression never matches.
 */
TimestampTz
taskq_cron_next(const TaskqCron *cron, const pg_tz *tz, TimestampTz after)
{
	int64		local;
	int64		m;

	if (cron->interval_us > 0)
	{
		/* multiples of the period since the Unix epoch */
		int64		epoch = -(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;
		int64		since = after - epoch;
		int64		q = since / cron->interval_us - (since % cron->interval_us < 0 ? 1 : 0);

		return epoch + (q + 1) * cron->interval_us;
	}

	local = after + (int64) zone_offset(after, tz) * USECS_PER_SEC;
	m = local / USECS_PER_MINUTE - (local % USECS_PER_MINUTE < 0 ? 1 : 0) + 1;
	for (;;)
	{
		TimestampTz t;

		m = next_local_minute(cron, m);
		if (m < 0)
			elog(ERROR, "taskq: cron expression matches no date");	/* parse refuses those */
		t = local_to_instant(m * USECS_PER_MINUTE, tz);
		if (t > after)
			return t;
		m++;					/* a repeated local time's second occurrence */
	}
}
