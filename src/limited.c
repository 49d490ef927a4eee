/*-------------------------------------------------------------------------
 *
 * limited.c
 *	  taskq._claim_queue(): the claim of one queue that has limits, aging
 *	  or group keys, for dispatchers and external claims alike.
 *
 * What it does.  Up to max_tasks due tasks of the queue become 'running'
 * for pid ('expired' when past expires_at), honouring the queue's
 * concurrency, group_concurrency, rate limits (token buckets), aging and
 * round-robin over group keys.  share is how many dispatchers serve the
 * queue, so that one does not take the whole concurrency into a batch it
 * runs one task after another.  for_external picks whose tasks: those of
 * external handlers (taskq.claim()) or the others (a dispatcher); each
 * kind has its own index, tasks_external_idx or tasks_queue_idx.
 *
 * Exact counts.  The queue's row is locked first, in a statement of its
 * own: under READ COMMITTED each later statement takes its snapshot after
 * the lock was granted, so it sees every claim that committed before, and
 * the counts of running tasks are exact.  Only this function claims a
 * limited queue's tasks (dispatchers exclude them from the plain claim),
 * so its UPDATE needs no SKIP LOCKED.
 *
 * Round-robin.  A grouped queue keeps the group it served last in
 * taskq.group_cursors.  A claim looks at the group keys after it, then
 * the tasks without a key, then, wrapping round, the keys from the first
 * up to the cursor: as many keys in all as the batch has places, or
 * GROUP_KEYS_LIMITED when group limits may hold some back.  Each group
 * that may start a task takes about its share of the batch (room /
 * groups, plus one for groups that come short), and the batch is the
 * best of those candidates by (effective priority, turn, position after
 * the cursor).  So priority order across groups holds up to that share
 * per batch, and a group with a million tasks delays a group with one by
 * at most one turn.
 *
 * Why in C.  The claim runs with the queue's row locked, so its length is
 * how fast every claimant of the queue can claim at all: two dispatchers
 * of a grouped queue spent half of their time waiting for each other
 * while a PL/pgSQL version planned its round-robin statement at every
 * claim.  Here every statement is planned once per backend (each of the
 * two kinds of claimant and each ordering, with or without aging, has its
 * own text, so that a plan reads its own partial index in order), the
 * candidates of all groups come from one statement, and the batch is
 * picked in C.
 *
 * It calls common.c and monitor.c (the set-returning call's tuplestore).
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include <math.h>

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

PG_FUNCTION_INFO_V1(taskq_claim_queue);

/* How many group keys a claim looks at when group limits may hold them back. */
#define GROUP_KEYS_LIMITED 1000
#define LIMIT_BUCKETS	15		/* inner LIMITs 1, 2, 4 ... 16384 (claims take at most 10,000) */

/* The queue's row, as the claim reads it under its lock. */
typedef struct QueueRow
{
	int			concurrency;	/* 0: none */
	int			group_concurrency;	/* 0: none */
	int			rate_count;		/* 0: none */
	double		rate_period_s;
	int			group_rate_count;	/* 0: none */
	double		group_rate_period_s;
	Datum		aging;			/* interval; 0: none */
	bool		grouped;
	bool		tokens_null;
	double		tokens;
	TimestampTz refilled_at;
	bool		held;			/* held_until is set */
} QueueRow;

/* One group a grouped claim looks at, in the order it looks at them. */
typedef struct KeyGroup
{
	char	   *key;			/* NULL: the tasks without a key */
	int			room;			/* how many it may start now */
} KeyGroup;

/* A task a claim may take: its group's position, its order in the group. */
typedef struct Candidate
{
	int64		id;
	int			group;			/* index into the claim's groups */
	int			eff;			/* effective priority */
	int			turn;			/* 1 for its group's first of that priority, ... */
	TimestampTz run_at;
} Candidate;

/* What one call claims with: its arguments and the time it runs at. */
typedef struct Claim
{
	Datum		queue;			/* text */
	Datum		skip;			/* text[]: handlers not to take */
	int			pid;
	int			share;
	bool		external;
	bool		aging;
	bool		skipping;		/* skip is not empty */
	TimestampTz t0;
	QueueRow	q;
} Claim;

/*
 * The kept plans: one per statement, and per kind of claimant (external
 * or not: each reads its own partial index), ordering (with aging the
 * effective priority is computed; without, the index is read in order)
 * and handler filter (see HANDLER_SQL).
 */
static SPIPlanPtr lock_plan = NULL;
static SPIPlanPtr busy_plan = NULL;
static SPIPlanPtr hold_plan = NULL;
static SPIPlanPtr settle_plan = NULL;
static SPIPlanPtr cursor_plan = NULL;
static SPIPlanPtr move_cursor_plan = NULL;
static SPIPlanPtr group_busy_plan = NULL;
static SPIPlanPtr group_tokens_plan = NULL;
static SPIPlanPtr charge_groups_plan = NULL;
static SPIPlanPtr mark_plan = NULL;
static SPIPlanPtr keys_plans[2];
static SPIPlanPtr keyless_plans[2][2][2][LIMIT_BUCKETS];
static SPIPlanPtr grouped_plans[2][2][2][LIMIT_BUCKETS];
static SPIPlanPtr walk_plans[2][2][2];

/* Run a kept plan and check SPI's answer: any other is a bug of ours. */
static void
execute(SPIPlanPtr plan, Datum *values, const char *nulls, int expect, const char *what)
{
	int			ret = SPI_execute_plan(plan, values, nulls, false, 0);

	if (ret != expect)
		elog(ERROR, "taskq: %s failed: %s", what, SPI_result_code_string(ret));
}

/* An int4 column that may be NULL, as 0. */
static int
int_or_zero(HeapTuple tup, TupleDesc desc, int attno)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, attno, &isnull);

	return isnull ? 0 : DatumGetInt32(d);
}

/* A float8 column that may be NULL, as 0. */
static double
float_or_zero(HeapTuple tup, TupleDesc desc, int attno)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, attno, &isnull);

	return isnull ? 0 : DatumGetFloat8(d);
}

/*
 * Lock the queue's row and read its limits; false when the queue has no
 * row or is paused (nothing to claim).
 */
static bool
lock_queue(Claim *c)
{
	Oid			types[1] = {TEXTOID};
	TupleDesc	desc;
	HeapTuple	tup;
	bool		isnull;
	Datum		d;

	execute(taskq_prepare_generic(&lock_plan,
						  "SELECT q.paused, q.concurrency, q.group_concurrency, q.rate_count,"
						  "  pg_catalog.date_part('epoch', q.rate_period), q.group_rate_count,"
						  "  pg_catalog.date_part('epoch', q.group_rate_period), q.aging, q.grouped,"
						  "  q.tokens, q.refilled_at, q.held_until IS NOT NULL"
						  " FROM taskq.queues q WHERE q.name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
						  1, types),
			&c->queue, NULL, SPI_OK_SELECT, "locking a limited queue");
	if (SPI_processed == 0)
		return false;
	desc = SPI_tuptable->tupdesc;
	tup = SPI_tuptable->vals[0];
	if (DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull)))
		return false;
	c->q.concurrency = int_or_zero(tup, desc, 2);
	c->q.group_concurrency = int_or_zero(tup, desc, 3);
	c->q.rate_count = int_or_zero(tup, desc, 4);
	c->q.rate_period_s = float_or_zero(tup, desc, 5);
	c->q.group_rate_count = int_or_zero(tup, desc, 6);
	c->q.group_rate_period_s = float_or_zero(tup, desc, 7);
	d = SPI_getbinval(tup, desc, 8, &isnull);
	c->q.aging = isnull ? (Datum) 0 : d;
	c->aging = !isnull;
	c->q.grouped = DatumGetBool(SPI_getbinval(tup, desc, 9, &isnull));
	c->q.tokens = float_or_zero(tup, desc, 10);
	c->q.tokens_null = isnull;
	d = SPI_getbinval(tup, desc, 11, &isnull);
	c->q.refilled_at = isnull ? 0 : DatumGetTimestampTz(d);
	c->q.tokens_null |= isnull;
	c->q.held = DatumGetBool(SPI_getbinval(tup, desc, 12, &isnull));
	return true;
}

/*
 * The tokens a bucket holds at now: count per period, full when never
 * used (as taskq._bucket(), which taskq.explain() uses).
 */
static double
bucket(bool never_used, double tokens, TimestampTz refilled_at, int count,
	   double period_s, TimestampTz now)
{
	double		waited_s;

	if (never_used)
		return count;
	waited_s = Max(0.0, (double) (now - refilled_at) / USECS_PER_SEC);
	return Min((double) count, tokens + waited_s * count / period_s);
}

/* The queue's running tasks (and dispatched ones), which its concurrency counts. */
static int
running_tasks(Claim *c)
{
	Oid			types[1] = {TEXTOID};
	bool		isnull;

	execute(taskq_prepare_generic(&busy_plan,
						  "SELECT pg_catalog.count(*)::pg_catalog.int4 FROM taskq.tasks t"
						  " WHERE t.queue OPERATOR(pg_catalog.=) $1 AND t.limited"
						  "   AND t.status OPERATOR(pg_catalog.=) ANY ('{running,dispatched}'::taskq.status[])",
						  1, types),
			&c->queue, NULL, SPI_OK_SELECT, "counting a limited queue's running tasks");
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * How many tasks this claim may start under the queue's concurrency (and
 * this dispatcher's share of it) and rate limit; *tokens gets the rate
 * bucket's tokens now.
 */
static int
queue_room(Claim *c, int max_tasks, double *tokens)
{
	int			room = max_tasks;

	if (c->q.concurrency > 0)
	{
		int			per_share = (c->q.concurrency + Max(c->share, 1) - 1) / Max(c->share, 1);

		room = Min(room, c->q.concurrency - running_tasks(c));
		room = Min(room, Max(1, per_share));
	}
	if (c->q.rate_count > 0)
	{
		*tokens = bucket(c->q.tokens_null, c->q.tokens, c->q.refilled_at,
						 c->q.rate_count, c->q.rate_period_s, c->t0);
		room = Min(room, (int) floor(*tokens));
	}
	return room;
}

/*
 * The rate bucket is empty: say when the next token comes (held_until,
 * which taskq.explain() and the dispatchers' sleep read).
 */
static void
hold_queue(Claim *c, double tokens)
{
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	double		wait_s = (1 - tokens) * c->q.rate_period_s / c->q.rate_count;
	Datum		values[2] = {c->queue,
	TimestampTzGetDatum(c->t0 + (int64) rint(wait_s * USECS_PER_SEC))};

	execute(taskq_prepare_generic(&hold_plan,
						  "UPDATE taskq.queues SET held_until = $2 WHERE name OPERATOR(pg_catalog.=) $1",
						  2, types),
			values, NULL, SPI_OK_UPDATE, "holding a rate-limited queue");
}

/*
 * The expression, condition and order the candidate statements differ
 * in: the effective priority ($eff: the parameter number of aging, then
 * the claim's time), the claimant's partial index, and the order within
 * a group.
 */
static char *
effective_priority_sql(bool aging, int param)
{
	return aging ?
		psprintf("taskq._effective_priority(t.priority, t.run_at, $%d, $%d)", param, param + 1) :
		pstrdup("t.priority");
}

#define EXTERNAL_SQL(external) ((external) ? "t.external" : "NOT t.external")

/*
 * The filter on skipped handlers (param: the text[] of them), written
 * only when there are some: with one handler in the table's statistics,
 * "handler <> ALL ($n)" is estimated to keep no row at all, and the
 * generic plan then sorts a sequential scan of the whole table instead of
 * reading the index in order (7 ms per claim at 100,000 tasks).
 */
#define HANDLER_SQL(skipping, param) \
	((skipping) ? " AND t.handler OPERATOR(pg_catalog.<>) ALL (" param ")" : "")

/*
 * The plans below read at most a number of tasks they are given: a
 * generic plan cannot read a LIMIT that is a parameter and guesses a
 * tenth of the rows, so it sorted a bitmap scan of the whole queue (or
 * group) every claim (30 ms at 100,000 tasks).  Their inner LIMIT is
 * therefore a number, the next power of two at or above the bound (one
 * plan per such number, its bucket here), and an outer LIMIT stops at
 * the bound itself.
 */
static int
limit_bucket(int limit)
{
	int			bucket = 0;

	while (bucket < LIMIT_BUCKETS - 1 && (1 << bucket) < limit)
		bucket++;
	return bucket;
}

/*
 * The due tasks without a group key, best first, at most $3: the whole
 * claim of a queue without group keys, and the keyless group's
 * candidates in a grouped one (at most limit: see limit_bucket).
 */
static SPIPlanPtr
keyless_plan(Claim *c, int limit)
{
	int			bucket = limit_bucket(limit);
	SPIPlanPtr *cache = &keyless_plans[c->external][c->aging][c->skipping][bucket];
	Oid			types[5] = {TEXTOID, TEXTARRAYOID, INT4OID, INTERVALOID, TIMESTAMPTZOID};

	if (*cache == NULL)
		taskq_prepare_generic(cache, psprintf("SELECT s.id, s.eff, s.run_at FROM ("
									  "SELECT t.id, %s AS eff, t.run_at FROM taskq.tasks t"
									  " WHERE t.queue OPERATOR(pg_catalog.=) $1 AND t.group_key IS NULL"
									  "   AND t.status OPERATOR(pg_catalog.=) 'queued' AND %s"
									  "   AND t.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()%s"
									  " ORDER BY %s LIMIT %d) s LIMIT $3",
									  effective_priority_sql(c->aging, 4), EXTERNAL_SQL(c->external),
									  HANDLER_SQL(c->skipping, "$2"),
									  c->aging ? "2 DESC, t.run_at, t.id" : TASKQ_SQL_UNGROUPED_ORDER,
									  1 << bucket),
					  5, types);
	return *cache;
}

/*
 * The due tasks of each group of $3 (text[]), at most the matching
 * element of $4 (int4[]) each, and at most limit (see limit_bucket),
 * best first: one statement, one index range per group.  o is the
 * group's position in $3.
 */
static SPIPlanPtr
grouped_plan(Claim *c, int limit)
{
	int			bucket = limit_bucket(limit);
	SPIPlanPtr *cache = &grouped_plans[c->external][c->aging][c->skipping][bucket];
	Oid			types[6] = {TEXTOID, TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID, INTERVALOID, TIMESTAMPTZOID};

	if (*cache == NULL)
		taskq_prepare_generic(cache, psprintf("SELECT k.o::pg_catalog.int4, c.id, c.eff, c.run_at"
									  " FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4))"
									  "      WITH ORDINALITY k(g, n, o),"
									  " LATERAL (SELECT s.id, s.eff, s.run_at FROM ("
									  "   SELECT t.id, %s AS eff, t.run_at FROM taskq.tasks t"
									  "   WHERE t.queue OPERATOR(pg_catalog.=) $1"
									  "     AND t.group_key OPERATOR(pg_catalog.=) k.g"
									  "     AND t.status OPERATOR(pg_catalog.=) 'queued' AND %s"
									  "     AND t.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()%s"
									  "   ORDER BY %s LIMIT %d) s LIMIT k.n) c",
									  effective_priority_sql(c->aging, 5), EXTERNAL_SQL(c->external),
									  HANDLER_SQL(c->skipping, "$2"),
									  c->aging ? "2 DESC, t.run_at, t.id" : "t.priority DESC, t.run_at, t.id",
									  1 << bucket),
					  6, types);
	return *cache;
}

/* Append the candidates in SPI_tuptable (group position in column group_col, 0: none). */
static int
add_candidates(Candidate *cands, int n, int group, int group_col)
{
	TupleDesc	desc = SPI_tuptable->tupdesc;
	uint64		i;
	bool		isnull;

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		int			col = group_col;

		cands[n].group = group_col > 0 ? DatumGetInt32(SPI_getbinval(tup, desc, col, &isnull)) - 1 : group;
		cands[n].id = DatumGetInt64(SPI_getbinval(tup, desc, col + 1, &isnull));
		cands[n].eff = DatumGetInt32(SPI_getbinval(tup, desc, col + 2, &isnull));
		cands[n].run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, col + 3, &isnull));
		n++;
	}
	return n;
}

/* Read up to limit tasks without a group key into cands at n; returns the new count. */
static int
read_keyless(Claim *c, int limit, Candidate *cands, int n, int group)
{
	Datum		values[5] = {c->queue, c->skip, Int32GetDatum(limit), c->q.aging,
	TimestampTzGetDatum(c->t0)};
	char		nulls[5] = {' ', ' ', ' ', c->aging ? ' ' : 'n', ' '};

	execute(keyless_plan(c, limit), values, nulls, SPI_OK_SELECT, "reading a limited queue's tasks");
	return add_candidates(cands, n, group, 0);
}

/*
 * The next group keys of the queue's queued tasks after "after" ('': from
 * the first), at most limit, appended to groups (with keys up to "upto"
 * only, when given); returns the new count.
 */
static int
read_keys(Claim *c, const char *after, const char *upto, int limit, KeyGroup *groups, int n)
{
	SPIPlanPtr *cache = &keys_plans[c->external];
	Oid			types[3] = {TEXTOID, TEXTOID, INT4OID};
	Datum		values[3] = {c->queue, CStringGetTextDatum(after), Int32GetDatum(limit)};
	uint64		i;

	if (*cache == NULL)
		taskq_prepare_generic(cache, psprintf("SELECT k.g FROM taskq._group_keys($1, $2, $3, %s) k(g)",
									  c->external ? "true" : "false"),
					  3, types);
	execute(*cache, values, NULL, SPI_OK_SELECT, "reading a grouped queue's keys");
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *key = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		/* in the column's collation, the order the keys come in */
		if (upto != NULL &&
			varstr_cmp(key, strlen(key), upto, strlen(upto), DEFAULT_COLLATION_OID) > 0)
			break;
		groups[n].key = key;
		groups[n].room = 0;
		n++;
	}
	return n;
}

/* The group keys of groups[0..n) as a text[] datum, NULL elements for the keyless group. */
static Datum
keys_array(const KeyGroup *groups, int n, int *keyless)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			i;

	*keyless = 0;
	for (i = 0; i < n; i++)
	{
		nulls[i] = groups[i].key == NULL;
		elems[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(groups[i].key);
		if (nulls[i])
			*keyless = i + 1;
	}
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Bound each group's room by its group_concurrency (its running tasks
 * counted in one statement, the keyless group's apart: "=" finds no NULL).
 */
static void
limit_group_concurrency(Claim *c, KeyGroup *groups, int n)
{
	Oid			types[3] = {TEXTOID, TEXTARRAYOID, INT4OID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	int			keyless;
	uint64		i;
	bool		isnull;

	values[0] = c->queue;
	values[1] = keys_array(groups, n, &keyless);
	values[2] = Int32GetDatum(keyless);
	nulls[2] = keyless ? ' ' : 'n';
	execute(taskq_prepare_generic(&group_busy_plan,
						  "SELECT k.o::pg_catalog.int4, (SELECT pg_catalog.count(*)::pg_catalog.int4 FROM taskq.tasks t"
						  "   WHERE t.queue OPERATOR(pg_catalog.=) $1 AND t.group_key OPERATOR(pg_catalog.=) k.g"
						  "     AND t.limited"
						  "     AND t.status OPERATOR(pg_catalog.=) ANY ('{running,dispatched}'::taskq.status[]))"
						  " FROM pg_catalog.unnest($2) WITH ORDINALITY k(g, o) WHERE k.g IS NOT NULL"
						  " UNION ALL"
						  " SELECT $3, (SELECT pg_catalog.count(*)::pg_catalog.int4 FROM taskq.tasks t"
						  "   WHERE t.queue OPERATOR(pg_catalog.=) $1 AND t.group_key IS NULL AND t.limited"
						  "     AND t.status OPERATOR(pg_catalog.=) ANY ('{running,dispatched}'::taskq.status[]))"
						  " WHERE $3 IS NOT NULL",
						  3, types),
			values, nulls, SPI_OK_SELECT, "counting a grouped queue's running tasks");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		int			g = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull)) - 1;
		int			busy = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));

		groups[g].room = Min(groups[g].room, c->q.group_concurrency - busy);
	}
}

/*
 * Bound each group's room by its group_rate_limit bucket (a group without
 * a bucket row has never started a task: its bucket is full).
 */
static void
limit_group_rate(Claim *c, KeyGroup *groups, int n)
{
	Oid			types[3] = {TEXTOID, TEXTARRAYOID, INT4OID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	int			keyless;
	int			i;
	uint64		r;
	bool		isnull;

	for (i = 0; i < n; i++)
		groups[i].room = Min(groups[i].room, c->q.group_rate_count);
	values[0] = c->queue;
	values[1] = keys_array(groups, n, &keyless);
	values[2] = Int32GetDatum(keyless);
	nulls[2] = keyless ? ' ' : 'n';
	execute(taskq_prepare_generic(&group_tokens_plan,
						  "SELECT k.o::pg_catalog.int4, b.tokens, b.refilled_at"
						  " FROM pg_catalog.unnest($2) WITH ORDINALITY k(g, o)"
						  " JOIN taskq.group_buckets b ON b.queue OPERATOR(pg_catalog.=) $1"
						  "  AND b.group_key OPERATOR(pg_catalog.=) k.g"
						  " UNION ALL"
						  " SELECT $3, b.tokens, b.refilled_at FROM taskq.group_buckets b"
						  "  WHERE b.queue OPERATOR(pg_catalog.=) $1 AND b.group_key IS NULL AND $3 IS NOT NULL",
						  3, types),
			values, nulls, SPI_OK_SELECT, "reading a grouped queue's rate buckets");
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		int			g = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)) - 1;
		double		tokens = bucket(false, DatumGetFloat8(SPI_getbinval(tup, desc, 2, &isnull)),
									DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull)),
									c->q.group_rate_count, c->q.group_rate_period_s, c->t0);

		groups[g].room = Min(groups[g].room, (int) floor(tokens));
	}
}

/* The group a grouped queue served last (NULL: none, or the keyless group). */
static char *
read_cursor(Claim *c)
{
	Oid			types[1] = {TEXTOID};

	execute(taskq_prepare_generic(&cursor_plan,
								  "SELECT c.last_group FROM taskq.group_cursors c"
								  " WHERE c.queue OPERATOR(pg_catalog.=) $1",
								  1, types),
			&c->queue, NULL, SPI_OK_SELECT, "reading a grouped queue's cursor");
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * The groups a grouped claim looks at, in turn order: the keys after the
 * cursor, the keyless group, the keys from the first up to the cursor;
 * each with the room its limits leave.  *last_key: the last key looked
 * at (NULL if none), where the cursor moves when nothing can start.
 */
static int
look_at_groups(Claim *c, int room, KeyGroup **out, char **last_key)
{
	bool		group_limits = c->q.group_concurrency > 0 || c->q.group_rate_count > 0;
	int			nkeys = group_limits ? GROUP_KEYS_LIMITED : room;
	KeyGroup	   *groups = palloc(sizeof(KeyGroup) * (2 * nkeys + 1));
	char	   *cursor = read_cursor(c);
	int			n = 0;
	int			i;

	n = read_keys(c, cursor ? cursor : "", NULL, nkeys, groups, n);
	groups[n].key = NULL;
	groups[n++].room = 0;
	/* wrapping round: as many keys from the first as are still to look at */
	if (cursor != NULL && n - 1 < nkeys)
		n = read_keys(c, "", cursor, nkeys - (n - 1), groups, n);
	*last_key = NULL;
	for (i = 0; i < n; i++)
	{
		groups[i].room = room;
		if (groups[i].key != NULL)
			*last_key = groups[i].key;
	}
	if (c->q.group_concurrency > 0)
		limit_group_concurrency(c, groups, n);
	if (c->q.group_rate_count > 0)
		limit_group_rate(c, groups, n);
	*out = groups;
	return n;
}

/*
 * The candidates of a grouped claim: of each group that may start a
 * task, up to its share of the batch, best first.  Returns how many.
 */
static int
read_grouped(Claim *c, int room, KeyGroup *groups, int ngroups, Candidate **out)
{
	Datum	   *keys = palloc(sizeof(Datum) * ngroups);
	Datum	   *limits = palloc(sizeof(Datum) * ngroups);
	int		   *positions = palloc(sizeof(int) * ngroups);
	int			turn = 0;
	int			keyless = -1;
	int			share;
	int			total = 0;
	int			n = 0;
	int			i;

	for (i = 0; i < ngroups; i++)
		turn += groups[i].room > 0;
	if (turn == 0)
		return 0;
	share = (room + turn - 1) / turn + 1;
	for (i = 0; i < ngroups; i++)
	{
		if (groups[i].room <= 0)
			continue;
		groups[i].room = Min(groups[i].room, share);
		total += groups[i].room;
		if (groups[i].key == NULL)
		{
			keyless = i;
			continue;
		}
		keys[n] = CStringGetTextDatum(groups[i].key);
		limits[n] = Int32GetDatum(groups[i].room);
		positions[n++] = i;
	}
	*out = palloc(sizeof(Candidate) * Max(total, 1));
	total = 0;
	if (n > 0)
	{
		Datum		values[6] = {c->queue, c->skip,
			PointerGetDatum(construct_array(keys, n, TEXTOID, -1, false, TYPALIGN_INT)),
			PointerGetDatum(construct_array(limits, n, INT4OID, 4, true, TYPALIGN_INT)),
		c->q.aging, TimestampTzGetDatum(c->t0)};
		char		nulls[6] = {' ', ' ', ' ', ' ', c->aging ? ' ' : 'n', ' '};

		execute(grouped_plan(c, share), values, nulls, SPI_OK_SELECT, "reading a grouped queue's tasks");
		total = add_candidates(*out, 0, 0, 1);
		for (i = 0; i < total; i++)
			(*out)[i].group = positions[(*out)[i].group];
	}
	if (keyless >= 0)
		total = read_keyless(c, groups[keyless].room, *out, total, keyless);
	return total;
}

/*
 * The walk of a grouped queue without group limits or aging: from group
 * key $2 on (up to $4, in the bounded text), each next group key (an
 * index-only probe of the claimant's index) and its best due task (a
 * second probe, NULL when nothing of it is due), until $5 groups had a
 * due task or $6 keys were walked.  Two probes of fixed shape per group:
 * one statement with "group_key > ... ORDER BY group_key, priority ..."
 * is planned as a sort of the whole range, whose estimate the filters
 * make one row.
 */
#define WALK_KEY_SQL \
	"(SELECT t.group_key AS g FROM taskq.tasks t" \
	"  WHERE t.queue OPERATOR(pg_catalog.=) $1 AND t.status OPERATOR(pg_catalog.=) 'queued' AND %s" \
	"    AND t.group_key OPERATOR(pg_catalog.>) %s%s" \
	"  ORDER BY t.group_key LIMIT 1) k"
#define WALK_TASK_SQL \
	" LEFT JOIN LATERAL (SELECT t.id, t.priority, t.run_at FROM taskq.tasks t" \
	"  WHERE t.queue OPERATOR(pg_catalog.=) $1 AND t.group_key OPERATOR(pg_catalog.=) k.g" \
	"    AND t.status OPERATOR(pg_catalog.=) 'queued' AND %s" \
	"    AND t.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()%s" \
	"  ORDER BY t.priority DESC, t.run_at, t.id LIMIT 1) x ON true"

/* The walk's plan, for the claimant's index, bounded by $4 or not. */
static SPIPlanPtr
walk_plan(Claim *c, bool bounded)
{
	SPIPlanPtr *cache = &walk_plans[c->external][c->skipping][bounded];
	const char *handlers = HANDLER_SQL(c->skipping, "$3");
	Oid			types[6] = {TEXTOID, TEXTOID, TEXTARRAYOID, TEXTOID, INT4OID, INT4OID};
	const char *ext = EXTERNAL_SQL(c->external);
	const char *bound = bounded ? " AND t.group_key OPERATOR(pg_catalog.<=) $4" : "";

	if (*cache == NULL)
		taskq_prepare_generic(cache,
							  psprintf("WITH RECURSIVE w(g, id, eff, run_at, n, steps) AS ("
									   " SELECT k.g, x.id, x.priority, x.run_at, (x.id IS NOT NULL)::pg_catalog.int4, 1"
									   " FROM " WALK_KEY_SQL WALK_TASK_SQL
									   " UNION ALL"
									   " SELECT k.g, x.id, x.priority, x.run_at,"
									   "  w.n OPERATOR(pg_catalog.+) (x.id IS NOT NULL)::pg_catalog.int4,"
									   "  w.steps OPERATOR(pg_catalog.+) 1"
									   " FROM w, LATERAL " WALK_KEY_SQL WALK_TASK_SQL
									   " WHERE w.n OPERATOR(pg_catalog.<) $5 AND w.steps OPERATOR(pg_catalog.<) $6)"
									   " SELECT w.g, w.id, w.eff, w.run_at FROM w",
									   ext, "$2", bound, ext, handlers, ext, "w.g", bound, ext, handlers),
							  6, types);
	return *cache;
}

/*
 * Walk from after (up to upto, when given) until limit groups had a due
 * task, appending each such group to groups (at *ngroups) and its task
 * to cands (at n); *last: the last key walked.  Returns the new count of
 * candidates.
 */
static int
walk(Claim *c, const char *after, const char *upto, int limit,
	 KeyGroup *groups, int *ngroups, Candidate *cands, int n, char **last)
{
	Datum		values[6] = {c->queue, CStringGetTextDatum(after), c->skip,
		upto ? CStringGetTextDatum(upto) : (Datum) 0, Int32GetDatum(limit),
	Int32GetDatum(GROUP_KEYS_LIMITED)};
	char		nulls[6] = {' ', ' ', ' ', upto ? ' ' : 'n', ' ', ' '};
	TupleDesc	desc;
	uint64		i;
	bool		isnull;

	execute(walk_plan(c, upto != NULL), values, nulls, SPI_OK_SELECT, "walking a grouped queue");
	desc = SPI_tuptable->tupdesc;
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		Datum		id = SPI_getbinval(tup, desc, 2, &isnull);

		*last = SPI_getvalue(tup, desc, 1);
		if (isnull)
			continue;			/* nothing of it is due */
		groups[*ngroups].key = *last;
		groups[*ngroups].room = 1;
		cands[n].group = (*ngroups)++;
		cands[n].id = DatumGetInt64(id);
		cands[n].eff = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		cands[n].run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		n++;
	}
	return n;
}

/*
 * The groups and candidates of a grouped queue without group limits or
 * aging, in the order look_at_groups() and read_grouped() give, but
 * from one walk: the groups after the cursor, the keyless group, then
 * from the first up to the cursor, as many groups with a due task as the
 * batch has places, one task each (a group with nothing due is stepped
 * over, not counted).  Only when these are fewer than the places does
 * each group's share (more than one task) take the statement of
 * read_grouped().  *last_key: the last key walked, where the cursor
 * moves when nothing was due.
 */
static int
walk_groups(Claim *c, int room, KeyGroup **groups_out, int *ngroups, Candidate **out,
			char **last_key)
{
	KeyGroup   *groups = palloc(sizeof(KeyGroup) * (room + 1));
	Candidate  *cands = palloc(sizeof(Candidate) * (room + 1));
	char	   *cursor = read_cursor(c);
	int			keyless;
	int			ng = 0;
	int			n;
	int			i;

	*last_key = NULL;
	n = walk(c, cursor ? cursor : "", NULL, room, groups, &ng, cands, 0, last_key);
	keyless = ng;
	groups[ng].key = NULL;
	groups[ng++].room = 1;
	if (cursor != NULL && ng - 1 < room)
		n = walk(c, "", cursor, room - (ng - 1), groups, &ng, cands, n, last_key);
	*groups_out = groups;
	*ngroups = ng;
	n = read_keyless(c, 1, cands, n, keyless);
	if (n < room)
	{
		/* fewer groups with a due task than places: each takes its share */
		for (i = 0; i < ng; i++)
			groups[i].room = room;
		return read_grouped(c, room, groups, ng, out);
	}
	*out = cands;
	return n;
}

/* Candidates by group, then best first in the group: to number each one's turn. */
static int
by_group(const void *a, const void *b)
{
	const Candidate *x = a;
	const Candidate *y = b;

	if (x->group != y->group)
		return x->group < y->group ? -1 : 1;
	if (x->eff != y->eff)
		return x->eff > y->eff ? -1 : 1;
	if (x->run_at != y->run_at)
		return x->run_at < y->run_at ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* The batch's order: effective priority, then turn, then the group's position. */
static int
by_claim_order(const void *a, const void *b)
{
	const Candidate *x = a;
	const Candidate *y = b;

	if (x->eff != y->eff)
		return x->eff > y->eff ? -1 : 1;
	if (x->turn != y->turn)
		return x->turn < y->turn ? -1 : 1;
	if (x->group != y->group)
		return x->group < y->group ? -1 : 1;
	if (x->run_at != y->run_at)
		return x->run_at < y->run_at ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/*
 * Order the grouped candidates into the batch: each one's turn within its
 * group and priority, then the claim order.  Returns how many to take.
 */
static int
pick(Candidate *cands, int n, int room)
{
	int			i;

	qsort(cands, n, sizeof(Candidate), by_group);
	for (i = 0; i < n; i++)
		cands[i].turn = (i > 0 && cands[i - 1].group == cands[i].group &&
						 cands[i - 1].eff == cands[i].eff) ? cands[i - 1].turn + 1 : 1;
	qsort(cands, n, sizeof(Candidate), by_claim_order);
	return Min(n, room);
}

/* A claimed row, by id: to put the UPDATE's rows back in claim order. */
typedef struct ClaimedRow
{
	int64		id;
	HeapTuple	row;
} ClaimedRow;

/* ClaimedRows by id. */
static int
by_id(const void *a, const void *b)
{
	int64		x = ((const ClaimedRow *) a)->id;
	int64		y = ((const ClaimedRow *) b)->id;

	return x < y ? -1 : x > y;
}

/*
 * Set the picked tasks running (or expired) and put them, in claim
 * order, into the call's result; returns how many (a task cancelled
 * since it was read is not among them).  The rows come back in no
 * particular order; they are put in order here rather than by a join
 * and a sort in the statement.
 */
static int
mark_running(Claim *c, const Candidate *cands, int n, Tuplestorestate *store)
{
	Oid			types[2] = {INT8ARRAYOID, INT4OID};
	Datum	   *ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum		values[2];
	ClaimedRow *rows;
	bool		isnull;
	uint64		i;

	for (i = 0; i < (uint64) n; i++)
		ids[i] = Int64GetDatum(cands[i].id);
	values[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = Int32GetDatum(c->pid);
	execute(taskq_prepare_generic(&mark_plan,
						  "UPDATE taskq.tasks t SET"
						  "   status = CASE WHEN t.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
						  "     THEN 'expired' ELSE 'running' END::taskq.status,"
						  "   worker_pid = $2, started_at = pg_catalog.now(), limited = true,"
						  "   finished_at = CASE WHEN t.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
						  "     THEN pg_catalog.now() END"
						  "  WHERE t.id OPERATOR(pg_catalog.=) ANY ($1) AND t.status OPERATOR(pg_catalog.=) 'queued'"
						  "  RETURNING t.id, t.handler, t.queue, t.priority, t.attempts, t.max_attempts,"
						  "   pg_catalog.ceil(pg_catalog.date_part('epoch', t.timeout) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8,"
						  "   t.owner::pg_catalog.oid, t.run_at, t.payload, t.metadata,"
						  "   t.status OPERATOR(pg_catalog.=) 'expired'",
						  2, types),
			values, NULL, SPI_OK_UPDATE_RETURNING, "claiming a limited queue's tasks");
	rows = palloc(sizeof(ClaimedRow) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		rows[i].row = SPI_tuptable->vals[i];
		rows[i].id = DatumGetInt64(SPI_getbinval(rows[i].row, SPI_tuptable->tupdesc, 1, &isnull));
	}
	qsort(rows, SPI_processed, sizeof(ClaimedRow), by_id);
	for (i = 0; i < (uint64) n; i++)
	{
		ClaimedRow	key = {.id = cands[i].id};
		ClaimedRow *found = bsearch(&key, rows, SPI_processed, sizeof(ClaimedRow), by_id);

		if (found != NULL)
			tuplestore_puttuple(store, found->row);
	}
	return (int) SPI_processed;
}

/*
 * After a claim that started tasks: the rate bucket pays for them, and a
 * hold of the queue ends.  A queue without a rate limit or hold has
 * nothing to write.
 */
static void
settle_queue(Claim *c, double tokens, int served)
{
	Oid			types[3] = {TEXTOID, FLOAT8OID, TIMESTAMPTZOID};
	Datum		values[3] = {c->queue, Float8GetDatum(tokens - served), TimestampTzGetDatum(c->t0)};
	char		nulls[3] = {' ', ' ', ' '};

	if (c->q.rate_count == 0 && !c->q.held)
		return;
	if (c->q.rate_count == 0)
		nulls[1] = nulls[2] = 'n';
	execute(taskq_prepare_generic(&settle_plan,
						  "UPDATE taskq.queues SET tokens = $2, refilled_at = $3, held_until = NULL"
						  " WHERE name OPERATOR(pg_catalog.=) $1",
						  3, types),
			values, nulls, SPI_OK_UPDATE, "charging a limited queue's rate");
}

/* Move the round-robin cursor of a grouped queue to key (NULL: the keyless group). */
static void
move_cursor(Claim *c, const char *key)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {c->queue, key ? CStringGetTextDatum(key) : (Datum) 0};
	char		nulls[2] = {' ', key ? ' ' : 'n'};

	execute(taskq_prepare_generic(&move_cursor_plan,
						  "INSERT INTO taskq.group_cursors AS c (queue, last_group) VALUES ($1, $2)"
						  " ON CONFLICT (queue) DO UPDATE SET last_group = excluded.last_group",
						  2, types),
			values, nulls, SPI_OK_INSERT, "moving a grouped queue's cursor");
}

/* The group rate buckets pay for the tasks picked from each group. */
static void
charge_groups(Claim *c, const KeyGroup *groups, int ngroups, const Candidate *cands, int n)
{
	Oid			types[6] = {TEXTOID, TEXTARRAYOID, INT4ARRAYOID, INT4OID, FLOAT8OID, TIMESTAMPTZOID};
	int		   *taken = palloc0(sizeof(int) * ngroups);
	KeyGroup	   *charged = palloc(sizeof(KeyGroup) * ngroups);
	Datum	   *counts = palloc(sizeof(Datum) * ngroups);
	Datum		values[6];
	int			keyless;
	int			m = 0;
	int			i;

	for (i = 0; i < n; i++)
		taken[cands[i].group]++;
	for (i = 0; i < ngroups; i++)
		if (taken[i] > 0)
		{
			charged[m] = groups[i];
			counts[m++] = Int32GetDatum(taken[i]);
		}
	values[0] = c->queue;
	values[1] = keys_array(charged, m, &keyless);
	values[2] = PointerGetDatum(construct_array(counts, m, INT4OID, 4, true, TYPALIGN_INT));
	values[3] = Int32GetDatum(c->q.group_rate_count);
	values[4] = Float8GetDatum(c->q.group_rate_period_s);
	values[5] = TimestampTzGetDatum(c->t0);
	execute(taskq_prepare_generic(&charge_groups_plan,
						  "INSERT INTO taskq.group_buckets AS b (queue, group_key, tokens, refilled_at)"
						  " SELECT $1, s.g, ($4 OPERATOR(pg_catalog.-) s.n)::pg_catalog.float8, $6"
						  "   FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) s(g, n)"
						  " ON CONFLICT (queue, group_key) DO UPDATE SET"
						  "   tokens = taskq._bucket(b.tokens, b.refilled_at, $4,"
						  "              pg_catalog.make_interval(secs => $5), $6)"
						  "            OPERATOR(pg_catalog.-) ($4 OPERATOR(pg_catalog.-) excluded.tokens),"
						  "   refilled_at = $6",
						  6, types),
			values, NULL, SPI_OK_INSERT, "charging a grouped queue's rate buckets");
}

/*
 * A grouped claim: the groups in turn, their candidates, the batch.
 * Returns how many tasks started, or -1 when none could (not due, or
 * held by their groups' limits).
 */
static int
claim_grouped(Claim *c, int room, Tuplestorestate *store)
{
	KeyGroup	   *groups;
	Candidate  *cands = NULL;
	char	   *last_key = NULL;
	int			ngroups;
	int			n;
	int			served;

	if (c->q.group_concurrency > 0 || c->q.group_rate_count > 0 || c->aging)
	{
		ngroups = look_at_groups(c, room, &groups, &last_key);
		n = read_grouped(c, room, groups, ngroups, &cands);
	}
	else
		n = walk_groups(c, room, &groups, &ngroups, &cands, &last_key);

	if (n == 0)
	{
		/* the next claim looks at the groups after these */
		if (last_key != NULL)
			move_cursor(c, last_key);
		return -1;
	}
	n = pick(cands, n, room);
	served = mark_running(c, cands, n, store);
	move_cursor(c, groups[cands[n - 1].group].key);
	if (c->q.group_rate_count > 0)
		charge_groups(c, groups, ngroups, cands, n);
	return served;
}

/*
 * The claim under the queue's lock: the room its limits leave, then the
 * tasks, then what the limits are charged.
 */
static void
claim(Claim *c, int max_tasks, Tuplestorestate *store)
{
	double		tokens = 0;
	int			room;
	int			served;

	if (!lock_queue(c))
		return;
	c->t0 = GetCurrentTimestamp();
	room = queue_room(c, max_tasks, &tokens);
	if (room <= 0)
	{
		if (c->q.rate_count > 0 && tokens < 1)
			hold_queue(c, tokens);
		return;
	}
	if (!c->q.grouped && c->q.group_concurrency == 0 && c->q.group_rate_count == 0)
	{
		Candidate  *cands = palloc(sizeof(Candidate) * room);
		int			n = read_keyless(c, room, cands, 0, 0);

		if (n == 0)
			return;
		served = mark_running(c, cands, n, store);
	}
	else if ((served = claim_grouped(c, room, store)) < 0)
		return;
	settle_queue(c, tokens, served);
}

/*
 * taskq._claim_queue(queue, max_tasks, share, pid, skip_handlers,
 * for_external): see the file header.  Strict: a NULL argument claims
 * nothing.
 */
Datum
taskq_claim_queue(PG_FUNCTION_ARGS)
{
	Claim		c = {0};
	Tuplestorestate *store;
	TupleDesc	desc;
	int			max_tasks = PG_GETARG_INT32(1);

	taskq_materialize(fcinfo, &store, &desc);
	c.queue = PG_GETARG_DATUM(0);
	c.share = PG_GETARG_INT32(2);
	c.pid = PG_GETARG_INT32(3);
	c.skip = PG_GETARG_DATUM(4);
	c.skipping = ArrayGetNItems(ARR_NDIM(DatumGetArrayTypeP(c.skip)),
								ARR_DIMS(DatumGetArrayTypeP(c.skip))) > 0;
	c.external = PG_GETARG_BOOL(5);
	if (max_tasks <= 0)
		return (Datum) 0;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "taskq: SPI_connect failed");
	claim(&c, max_tasks, store);
	SPI_finish();
	return (Datum) 0;
}
