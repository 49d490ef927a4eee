/*-------------------------------------------------------------------------
 *
 * cursors.c
 *	  A dispatcher's claim cursors: where, in each queue's dispatch order,
 *	  its plain claim starts reading.
 *
 * Why.  A claim reads a queue's tasks_queue_idx entries in dispatch order
 * (priority DESC, run_at, id) from the first.  Claiming a task leaves its
 * 'queued' entry behind, pointing at a row version that is dead to every
 * snapshot but the oldest one still held; index scans mark such entries
 * dead, and skip them cheaply, only once no snapshot can see the version.
 * While a session holds a snapshot (a long report, pg_dump, a replica's
 * hot_standby_feedback), every task claimed since then stays an entry the
 * claim must visit and test against the heap: 2,000 tasks/s for two
 * minutes is 240,000 visits per claim, and the queue that was keeping up
 * falls behind by seconds.  A cursor is the last key a claim took in that
 * queue (priority, run_at, id); the next claim reads from it, so it visits
 * the entries of tasks claimed since its previous claim only.
 *
 * What can be behind a cursor, and who says so.  A claim reads from the
 * cursor to the first unlocked due tasks; a task whose key is earlier and
 * becomes claimable afterwards must move the cursor back (a rewind):
 *
 *	- a task enqueued by a transaction that began before the tasks claimed
 *	  since (run_at is the transaction's start), or of a higher priority:
 *	  its commit merges its key into the rewind of every dispatcher slot of
 *	  the database (shmem.c), after the commit is visible.  A claim takes
 *	  its slot's rewind before its snapshot: either the snapshot sees the
 *	  task and the claim reads from the rewound key, or the rewind waits
 *	  for the next claim.  Nothing is missed, and in steady state (tasks
 *	  enqueued in order) nothing moves back.
 *	- a task made claimable any other way (a retry, a release from its
 *	  parents, a resumed queue, a handler enabled, a requeue after a
 *	  crash): its commit rewinds every cursor of the database to the start
 *	  (taskq_request_wakeup_at_commit()).
 *	- a delayed task whose run_at came since the previous claim: looked up
 *	  at each claim through tasks_scheduled_idx, over that time window only.
 *	- a task that COMMIT PREPARED made claimable (two-phase commit wakes
 *	  nobody): a dispatcher woken by taskq.poll_interval, not a commit,
 *	  drops its cursors first.
 *	- a task the claim found locked: the cursor stops at it (see
 *	  taskq_cursors_advance()).
 *	- anything else (a superuser's UPDATE of taskq.tasks): the cursors are
 *	  dropped every CURSOR_RESCAN_MS, which bounds how long it can wait.
 *
 * A cursor moved back to a higher priority than its own makes the claim
 * read that priority from the key and every lower one from its start.
 * Queues claimed through taskq._claim_queue() (limits, aging, group keys)
 * keep no cursor.  The cursors live in the dispatcher's memory; a new
 * dispatcher starts without any.
 *
 * It calls shmem.c and outbox.c.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

/* How often the cursors are dropped, whatever the rewinds said. */
#define CURSOR_RESCAN_MS	60000

/* The queues a dispatcher keeps cursors for; others are read from the start. */
#define MAX_CURSORS			64

typedef struct Cursor
{
	char		queue[TASKQ_NAME_MAXLEN + 1];
	uint32		hash;
	int			priority;
	TimestampTz run_at;
	int64		id;				/* 0 after a rewind: every id of that run_at */
} Cursor;

static Cursor cursors[MAX_CURSORS];
static int	ncursors = 0;

/*
 * The default executor's served queues, as last listed (queues with
 * queued tasks; taskq_outbox_queued_queues()), kept while every rewind and
 * every delayed task that became due names one of them.  Listing them
 * reads the first entry of each queue's range, through the entries that
 * a held snapshot keeps: the claim must not do that every time.
 */
static char known[MAX_CURSORS][TASKQ_NAME_MAXLEN + 1];
static uint32 known_hash[MAX_CURSORS];
static int	nknown = 0;
static bool known_valid = false;
static uint32 known_others = 0; /* a hash of the others they were listed without */
static TimestampTz dropped_at = 0;
static TimestampTz last_claim_at = DT_NOBEGIN;	/* the previous claim's now() */
static TimestampTz this_claim_at = DT_NOBEGIN;

/* Whether key (p1, r1, i1) comes before (p2, r2, i2) in dispatch order. */
static bool
key_before(int p1, TimestampTz r1, int64 i1, int p2, TimestampTz r2, int64 i2)
{
	return p1 > p2 || (p1 == p2 && (r1 < r2 || (r1 == r2 && i1 < i2)));
}

/* Whether key (p, r, i) comes before the cursor c. */
static bool
before(int p, TimestampTz r, int64 i, const Cursor *c)
{
	return key_before(p, r, i, c->priority, c->run_at, c->id);
}

/* Move cursor c back to (p, r, i) if that comes before it. */
static void
move_back(Cursor *c, int p, TimestampTz r, int64 i)
{
	if (before(p, r, i, c))
	{
		c->priority = p;
		c->run_at = r;
		c->id = i;
	}
}

/* Drop cursor i (order does not matter). */
static void
drop(int i)
{
	cursors[i] = cursors[--ncursors];
}

/* Whether the queue of this hash is among the known ones. */
static bool
is_known(uint32 hash)
{
	int			i;

	for (i = 0; i < nknown; i++)
		if (known_hash[i] == hash)
			return true;
	return false;
}

/* Add a listed queue to the known ones (the list fails if they are too many). */
static void
add_known(const char *queue)
{
	if (nknown == MAX_CURSORS)
	{
		known_valid = false;
		return;
	}
	strlcpy(known[nknown], queue, sizeof(known[nknown]));
	known_hash[nknown++] = taskq_queue_hash(queue);
}

/*
 * Move the cursors that rw names back to its key, or drop them; a rewind
 * of a queue not known, or of every queue, has the queues listed again.
 */
static void
apply_rewind(const TaskqRewind *rw)
{
	int			i = 0;

	if (!rw->set)
		return;
	if (rw->queue_hash == 0 || !is_known(rw->queue_hash))
		known_valid = false;
	while (i < ncursors)
	{
		Cursor	   *c = &cursors[i];

		if (rw->queue_hash != 0 && rw->queue_hash != c->hash)
			i++;
		else if (rw->priority == TASKQ_REWIND_ALL)
			drop(i);
		else
		{
			move_back(c, rw->priority, rw->run_at, 0);
			i++;
		}
	}
}

/* Move queue's cursor back to (priority, run_at), if it has one behind that. */
static void
rewind_due(const char *queue, int priority, TimestampTz run_at)
{
	TaskqRewind rw = {.set = true, .queue_hash = taskq_queue_hash(queue),
	.priority = priority, .run_at = run_at};

	apply_rewind(&rw);
}

/*
 * Drop every cursor and the known queues: the next claim reads every
 * queue from its start.  For a dispatcher woken by the clock rather than
 * a commit: a task that COMMIT PREPARED made claimable rewinds nothing.
 */
void
taskq_cursors_forget(void)
{
	ncursors = 0;
	known_valid = false;
}

/*
 * Before a claim's snapshot: take our slot's rewinds and, every
 * CURSOR_RESCAN_MS, drop every cursor.
 */
void
taskq_cursors_take_rewinds(TaskqSlot *slot)
{
	TaskqRewind rw;
	TimestampTz now = GetCurrentTimestamp();

	taskq_take_rewind(slot, &rw);
	if (TimestampDifferenceExceeds(dropped_at, now, CURSOR_RESCAN_MS))
	{
		taskq_cursors_forget();
		dropped_at = now;
	}
	apply_rewind(&rw);
}

/* The queues other executors serve (text[] or 0), hashed. */
static uint32
others_hash(Datum others)
{
	struct varlena *a;

	if (others == (Datum) 0)
		return 0;
	a = PG_DETOAST_DATUM(others);
	return hash_bytes((const unsigned char *) VARDATA(a), VARSIZE(a) - VARHDRSZ);
}

/*
 * For the default executor (served->queues 0), name the queues it serves
 * in *served: the known ones, listed again when they may be incomplete.
 * Named executors' queues are in taskq.executors.
 */
static void
serve_known(TaskqServed *served)
{
	Datum	   *names;
	int			i;

	if (served->queues != (Datum) 0)
		return;
	if (others_hash(served->others) != known_others)
		known_valid = false;	/* taskq.executors changed */
	if (!known_valid)
	{
		nknown = 0;
		known_valid = true;
		known_others = others_hash(served->others);
		taskq_outbox_queued_queues(served->others, add_known);
		if (!known_valid)
			return;				/* too many: the claim lists them itself */
	}
	names = palloc(sizeof(Datum) * Max(nknown, 1));
	for (i = 0; i < nknown; i++)
		names[i] = CStringGetTextDatum(known[i]);
	served->queues = PointerGetDatum(construct_array(names, nknown, TEXTOID,
													 -1, false, TYPALIGN_INT));
}

/*
 * In the claim's transaction, before the claim: move cursors back to the
 * delayed tasks that became due since the previous claim, name the
 * default executor's queues (serve_known), and hand the cursors to the
 * claim in *served (arrays in the current memory context).
 */
void
taskq_cursors_prepare(TaskqServed *served)
{
	Datum	   *queues = palloc(sizeof(Datum) * Max(ncursors, 1));
	Datum	   *priorities = palloc(sizeof(Datum) * Max(ncursors, 1));
	Datum	   *run_ats = palloc(sizeof(Datum) * Max(ncursors, 1));
	Datum	   *ids = palloc(sizeof(Datum) * Max(ncursors, 1));
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	int			i;

	/* nothing to move back: every queue is read, and listed, from its start */
	if (ncursors > 0 || known_valid)
		taskq_outbox_due_since(last_claim_at, rewind_due);
	this_claim_at = now;
	serve_known(served);
	for (i = 0; i < ncursors; i++)
	{
		queues[i] = CStringGetTextDatum(cursors[i].queue);
		priorities[i] = Int32GetDatum(cursors[i].priority);
		run_ats[i] = TimestampTzGetDatum(cursors[i].run_at);
		ids[i] = Int64GetDatum(cursors[i].id);
	}
	served->cursor_queues = PointerGetDatum(construct_array(queues, ncursors, TEXTOID,
															-1, false, TYPALIGN_INT));
	served->cursor_priorities = PointerGetDatum(construct_array(priorities, ncursors, INT4OID,
																4, true, TYPALIGN_INT));
	served->cursor_run_ats = PointerGetDatum(construct_array(run_ats, ncursors, TIMESTAMPTZOID,
															 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	served->cursor_ids = PointerGetDatum(construct_array(ids, ncursors, INT8OID,
														 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* queue's cursor, made (without a key) if it has none and there is room. */
static Cursor *
cursor_of(const char *queue)
{
	int			i;

	for (i = 0; i < ncursors; i++)
		if (strcmp(cursors[i].queue, queue) == 0)
			return &cursors[i];
	if (ncursors == MAX_CURSORS)
		return NULL;
	strlcpy(cursors[ncursors].queue, queue, sizeof(cursors[ncursors].queue));
	cursors[ncursors].hash = taskq_queue_hash(queue);
	cursors[ncursors].priority = TASKQ_REWIND_ALL;
	cursors[ncursors].id = 0;
	return &cursors[ncursors++];
}

/*
 * After the plain claim that taskq_cursors_prepare() prepared committed,
 * having taken tasks[0..n): each queue's cursor becomes the last key it
 * took there, or its first candidate that the claim found locked (by
 * another dispatcher, or by a session that has a queued task locked for
 * a while: a parent gaining a child, a retry() that changes nothing), if
 * that comes first.  Everything before is claimed or not claimable yet
 * (and rewinds when it becomes so).  A queue that gave nothing keeps its
 * cursor.  The next claim looks for delayed tasks that became due from
 * this claim's now() on; a claim that failed never gets here, and the
 * next looks from the one before.
 */
void
taskq_cursors_advance(const TaskqTask *tasks, int n)
{
	bool		seen[MAX_CURSORS] = {false};
	int			i;

	last_claim_at = this_claim_at;

	for (i = 0; i < n; i++)
	{
		Cursor	   *c = cursor_of(tasks[i].queue);
		int			at;

		if (c == NULL)
			continue;
		at = (int) (c - cursors);
		if (!seen[at] || !before(tasks[i].priority, tasks[i].run_at, tasks[i].id, c))
		{
			c->priority = tasks[i].priority;
			c->run_at = tasks[i].run_at;
			c->id = tasks[i].id;
		}
		seen[at] = true;
	}
	for (i = 0; i < n; i++)
	{
		Cursor	   *c = tasks[i].skipped ? cursor_of(tasks[i].queue) : NULL;

		if (c != NULL)
			move_back(c, tasks[i].skip_priority, tasks[i].skip_run_at, tasks[i].skip_id);
	}
}
