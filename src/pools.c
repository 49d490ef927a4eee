/*-------------------------------------------------------------------------
 *
 * pools.c
 *	  Executors: the worker pools of taskq.executors.
 *
 * taskq.executors names pools of dispatchers and the queues each serves:
 *
 *	'mail: queues=mail,newsletters workers=4; reports: queues=reports workers=1 batch_size=1'
 *
 * Pool 0 is always the executor "default": every queue that no other
 * executor names, with taskq.workers dispatchers and taskq.batch_size.
 * It is not written in the setting (naming it is refused: its size is
 * taskq.workers').  The check hook parses a value into one flat,
 * malloc'd TaskqPools (a GUC "extra"), so a bad value is refused whole,
 * with the part that is wrong named, and the value in force stays; the
 * assign hook only switches the pointer.  Every process reads its own
 * copy, reloaded at SIGHUP: the launcher to decide which dispatchers run,
 * a dispatcher to learn its queues and batch size.
 *
 * It calls no other file.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include <ctype.h>

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#define SEPARATORS	" \t\r\n;:=,"

/* The value in force (the assign hook's), or NULL before the first one. */
static const TaskqPools *pools = NULL;

/* A parse error: its detail and hint, formatted into fixed buffers. */
typedef struct ParseError
{
	char		detail[256];
	char		hint[256];
} ParseError;

static bool
fail(ParseError *err, const char *hint, const char *fmt,...) pg_attribute_printf(3, 4);

/* Record why the value is refused; returns false for the caller to return. */
static bool
fail(ParseError *err, const char *hint, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
	va_end(ap);
	strlcpy(err->hint, hint, sizeof(err->hint));
	return false;
}

/* Skip blanks. */
static const char *
skip_space(const char *p)
{
	while (*p && isspace((unsigned char) *p))
		p++;
	return p;
}

/*
 * Read a name (an executor's or a queue's) at *p into out: 1 to
 * TASKQ_NAME_MAXLEN bytes, none of them a blank, a control character or
 * one of the setting's separators.  False if there is none or it is too
 * long.
 */
static bool
read_name(const char **p, char *out, const char *article, const char *what, ParseError *err)
{
	const char *s = *p;
	size_t		len = 0;

	while (s[len] && strchr(SEPARATORS, s[len]) == NULL &&
		   (unsigned char) s[len] >= 0x20 && s[len] != 0x7f)
		len++;
	if (s[len] && strchr(SEPARATORS, s[len]) == NULL)
		return fail(err, "Names are 1 to 63 bytes long, without blanks, control characters or \";:=,\".",
					"The %s name that begins \"%.*s\" contains a control character (0x%02x).",
					what, (int) Min(len, 40), s, (unsigned char) s[len]);
	if (len == 0)
		return fail(err, "Write executors as \"name: queues=q1,q2 workers=N batch_size=N\", separated by \";\".",
					"Expected %s %s name at \"%.40s\".", article, what, s);
	if (len > TASKQ_NAME_MAXLEN)
		return fail(err, "Names are 1 to 63 bytes long, without blanks, control characters or \";:=,\".",
					"The %s name \"%.*s\" is longer than %d bytes.", what, (int) Min(len, 80), s,
					TASKQ_NAME_MAXLEN);
	memcpy(out, s, len);
	out[len] = '\0';
	*p = s + len;
	return true;
}

/* An integer in [min, max] for key of executor pool; false if not. */
static bool
read_number(const char **p, const TaskqPool *pool, const char *key, int min, int max,
			int *out, ParseError *err)
{
	const char *s = *p;
	long		v = 0;
	int			digits = 0;

	while (isdigit((unsigned char) s[digits]) && digits < 10)
		v = v * 10 + (s[digits++] - '0');
	if (digits == 0 || isdigit((unsigned char) s[digits]) ||
		(s[digits] && strchr(SEPARATORS, s[digits]) == NULL) || v < min || v > max)
	{
		int			len = 0;

		while (s[len] && !isspace((unsigned char) s[len]) && s[len] != ';')
			len++;
		return fail(err, "",
					"%s of executor \"%s\" is \"%.*s\"; it must be an integer from %d to %d.",
					key, pool->name, Min(len, 40), s, min, max);
	}
	*out = (int) v;
	*p = s + digits;
	return true;
}

/* The executor that names queue already, or -1. */
static int
pool_of_queue(const TaskqPools *ps, const char *queue)
{
	int			i,
				j;

	for (i = 1; i < ps->npools; i++)
		for (j = 0; j < ps->pools[i].nqueues; j++)
			if (strcmp(ps->queues[ps->pools[i].first_queue + j], queue) == 0)
				return i;
	return -1;
}

/* The comma list of queues=, into pool (the last one, being parsed). */
static bool
read_queues(const char **p, TaskqPools *ps, TaskqPool *pool, ParseError *err)
{
	if (pool->nqueues > 0)
		return fail(err, "", "Executor \"%s\" has queues= twice.", pool->name);
	pool->first_queue = ps->nqueues;
	for (;;)
	{
		char		queue[TASKQ_NAME_MAXLEN + 1];
		int			other;

		if (!read_name(p, queue, "a", "queue", err))
			return false;
		other = pool_of_queue(ps, queue);
		if (other >= 0)
			return fail(err, "A queue is served by one executor.",
						"Queue \"%s\" is in executor \"%s\" and in executor \"%s\".",
						queue, ps->pools[other].name, pool->name);
		if (ps->nqueues >= TASKQ_MAX_POOL_QUEUES)
			return fail(err, "", "taskq.executors names more than %d queues.", TASKQ_MAX_POOL_QUEUES);
		strlcpy(ps->queues[ps->nqueues++], queue, TASKQ_NAME_MAXLEN + 1);
		pool->nqueues++;
		if (**p != ',')
			return true;
		(*p)++;
	}
}

/* One key=value of pool at *p. */
static bool
read_setting(const char **p, TaskqPools *ps, TaskqPool *pool, ParseError *err)
{
	char		key[TASKQ_NAME_MAXLEN + 1];

	if (!read_name(p, key, "a", "key", err))
		return false;
	if (**p != '=')
		return fail(err, "Write each setting as key=value, without blanks around \"=\".",
					"Expected \"=\" after \"%s\" in executor \"%s\".", key, pool->name);
	(*p)++;
	if (strcmp(key, "queues") == 0)
		return read_queues(p, ps, pool, err);
	if (strcmp(key, "workers") == 0)
		return read_number(p, pool, "workers", 0, TASKQ_MAX_POOL_WORKERS, &pool->workers, err);
	if (strcmp(key, "batch_size") == 0)
		return read_number(p, pool, "batch_size", 1, TASKQ_MAX_BATCH, &pool->batch_size, err);
	return fail(err, "The keys are queues, workers and batch_size.",
				"Unknown key \"%s\" in executor \"%s\".", key, pool->name);
}

/* One "name: key=value ..." at *p, up to the next ";" or the end. */
static bool
read_pool(const char **p, TaskqPools *ps, ParseError *err)
{
	TaskqPool  *pool;
	char		name[TASKQ_NAME_MAXLEN + 1];
	int			i;

	if (!read_name(p, name, "an", "executor", err))
		return false;
	if (strcmp(name, "default") == 0)
		return fail(err, "Set taskq.workers and taskq.batch_size for the default executor.",
					"The executor \"default\" cannot be named: it serves every queue that no other executor names.");
	for (i = 1; i < ps->npools; i++)
		if (strcmp(ps->pools[i].name, name) == 0)
			return fail(err, "", "Executor \"%s\" is named twice.", name);
	if (ps->npools >= TASKQ_MAX_POOLS)
		return fail(err, "", "taskq.executors names more than %d executors.", TASKQ_MAX_POOLS - 1);
	*p = skip_space(*p);
	if (**p != ':')
		return fail(err, "Write executors as \"name: queues=q1,q2 workers=N batch_size=N\", separated by \";\".",
					"Expected \":\" after executor name \"%s\".", name);
	(*p)++;
	pool = &ps->pools[ps->npools++];
	strlcpy(pool->name, name, sizeof(pool->name));
	pool->workers = 1;
	pool->batch_size = 0;
	for (*p = skip_space(*p); **p && **p != ';'; *p = skip_space(*p))
		if (!read_setting(p, ps, pool, err))
			return false;
	if (pool->nqueues == 0)
		return fail(err, "Every executor but the default one needs queues=.",
					"Executor \"%s\" has no queues.", name);
	return true;
}

/*
 * Parse a taskq.executors value into *ps.  Empty parts (";;", a final
 * ";") are allowed.
 */
static bool
parse_pools(const char *value, TaskqPools *ps, ParseError *err)
{
	const char *p = value ? value : "";

	memset(ps, 0, sizeof(*ps));
	strlcpy(ps->pools[0].name, "default", sizeof(ps->pools[0].name));
	ps->npools = 1;
	for (p = skip_space(p); *p; p = skip_space(p))
	{
		if (*p == ';')
		{
			p++;
			continue;
		}
		if (!read_pool(&p, ps, err))
			return false;
	}
	return true;
}

/* The check hook of taskq.executors: parse, or refuse naming the part. */
bool
taskq_check_executors(char **newval, void **extra, GucSource source)
{
	TaskqPools *ps = malloc(sizeof(TaskqPools));
	ParseError	err;

	if (ps == NULL)
		return false;
	if (!parse_pools(*newval, ps, &err))
	{
		free(ps);
		GUC_check_errdetail("%s", err.detail);
		if (err.hint[0])
			GUC_check_errhint("%s", err.hint);
		return false;
	}
	*extra = ps;
	return true;
}

/* The assign hook: the parsed value is in force. */
void
taskq_assign_executors(const char *newval, void *extra)
{
	pools = extra;
}

/* The executors in force; the default one alone before any value. */
static const TaskqPools *
current(void)
{
	static TaskqPools none = {.npools = 1, .pools = {{.name = "default"}}};

	return pools ? pools : &none;
}

/* How many executors there are, the default one (number 0) included. */
int
taskq_pool_count(void)
{
	return current()->npools;
}

/* Executor i's name. */
const char *
taskq_pool_name(int i)
{
	return current()->pools[i].name;
}

/* Executor i's dispatchers per database. */
int
taskq_pool_workers(int i)
{
	return i == 0 ? taskq_workers : current()->pools[i].workers;
}

/* Executor i's batch size. */
int
taskq_pool_batch_size(int i)
{
	int			b = i == 0 ? 0 : current()->pools[i].batch_size;

	return b > 0 ? b : taskq_batch_size;
}

/* The dispatchers of every executor, per database. */
int
taskq_pool_total_workers(void)
{
	int			i,
				n = 0;

	for (i = 0; i < taskq_pool_count(); i++)
		n += taskq_pool_workers(i);
	return n;
}

/* The executor named name, or -1. */
int
taskq_pool_find(const char *name)
{
	int			i;

	for (i = 0; i < taskq_pool_count(); i++)
		if (strcmp(current()->pools[i].name, name) == 0)
			return i;
	return -1;
}

/*
 * The executor that serves queue, or NULL when the one that would has no
 * dispatchers (workers=0, or taskq.workers = 0 for the default one): its
 * tasks wait until one is configured.
 */
const char *
taskq_queue_executor(const char *queue)
{
	int			i = pool_of_queue(current(), queue);

	if (i < 0)
		i = 0;
	return taskq_pool_workers(i) > 0 ? taskq_pool_name(i) : NULL;
}

/* The queues of executors first .. last as a text[] datum. */
static Datum
queue_array(int first, int last)
{
	const TaskqPools *ps = current();
	int			i,
				j,
				n = 0;
	Datum	   *elems = palloc(sizeof(Datum) * Max(ps->nqueues, 1));

	for (i = first; i <= last; i++)
		for (j = 0; j < ps->pools[i].nqueues; j++)
			elems[n++] = CStringGetTextDatum(ps->queues[ps->pools[i].first_queue + j]);
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * What executor i's claims serve, for taskq_outbox_claim(): its queues,
 * or for the default executor every queue but the others' (allocated in
 * the current memory context).
 */
void
taskq_pool_served(int i, TaskqServed *served)
{
	if (i == 0)
	{
		served->queues = (Datum) 0;
		served->others = queue_array(1, taskq_pool_count() - 1);
	}
	else
	{
		served->queues = queue_array(i, i);
		served->others = (Datum) 0;
	}
}
