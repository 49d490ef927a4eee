/*-------------------------------------------------------------------------
 *
 * taskq.c
 *	  Module magic, _PG_init and the GUCs; nothing else.
 *
 * Settings that size shared memory do not exist: worker slots are sized by
 * max_worker_processes, so every taskq.* setting takes effect on reload or,
 * for the enqueue defaults, per session.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/varlena.h"

PG_MODULE_MAGIC;

char	   *taskq_databases = NULL;
int			taskq_workers = 2;
int			taskq_batch_size = 32;
int			taskq_poll_interval = 1000;
bool		taskq_enabled = true;
int			taskq_default_priority = 0;
char	   *taskq_default_queue = NULL;
int			taskq_default_max_attempts = 5;
int			taskq_default_timeout = 5 * 60 * 1000;
int			taskq_default_mode = TASKQ_MODE_ASYNC;
bool		taskq_require_enqueue = false;
int			taskq_policy = TASKQ_POLICY_DISPATCH;
char	   *taskq_block_handlers = NULL;
bool		taskq_synchronous_commit = false;
bool		taskq_dry_run = false;
int			taskq_retry_backoff = 1000;
int			taskq_retry_backoff_max = 60 * 60 * 1000;
int			taskq_ack_timeout = 60 * 1000;
int			taskq_retention = 24 * 60 * 60;
bool		taskq_trace = false;
int			taskq_interrupt_grace = 2000;
char	   *taskq_executors = NULL;

bool		taskq_preloaded = false;

static const struct config_enum_entry mode_options[] = {
	{"async", TASKQ_MODE_ASYNC, false},
	{"sync", TASKQ_MODE_SYNC, false},
	{NULL, 0, false}
};

static const struct config_enum_entry policy_options[] = {
	{"dispatch", TASKQ_POLICY_DISPATCH, false},
	{"drop", TASKQ_POLICY_DROP, false},
	{"assert_none", TASKQ_POLICY_ASSERT_NONE, false},
	{NULL, 0, false}
};

void		_PG_init(void);

/*
 * taskq.default_queue must be a valid queue name.
 */
static bool
check_queue_name(char **newval, void **extra, GucSource source)
{
	const char *s = *newval;

	if (s == NULL || s[0] == '\0' || strlen(s) > TASKQ_NAME_MAXLEN)
	{
		GUC_check_errdetail("A queue name must be 1 to %d bytes long.", TASKQ_NAME_MAXLEN);
		return false;
	}
	for (; *s; s++)
	{
		if ((unsigned char) *s < 0x20 || *s == 0x7f)
		{
			GUC_check_errdetail("A queue name must not contain control characters.");
			return false;
		}
	}
	return true;
}

/*
 * taskq.databases and taskq.block_handlers are comma-separated lists of
 * names, taken as written (double-quote a name with a comma).
 */
static bool
check_name_list(char **newval, const char *what)
{
	char	   *raw;
	List	   *names;
	bool		ok;

	raw = pstrdup(*newval ? *newval : "");
	ok = SplitGUCList(raw, ',', &names);
	if (!ok)
		GUC_check_errdetail("List syntax is invalid; write %s names separated by commas.", what);
	list_free(names);
	pfree(raw);
	return ok;
}

/* taskq.databases: a comma list of names, checked before it is taken. */
static bool
check_databases(char **newval, void **extra, GucSource source)
{
	return check_name_list(newval, "database");
}

/* taskq.block_handlers: a comma list of handler names. */
static bool
check_handler_list(char **newval, void **extra, GucSource source)
{
	return check_name_list(newval, "handler");
}

void
_PG_init(void)
{
	if (IsBinaryUpgrade)
		return;

	taskq_preloaded = process_shared_preload_libraries_in_progress;

	DefineCustomStringVariable("taskq.databases",
							   "Databases in which taskq dispatchers run.",
							   "A comma-separated list of database names.",
							   &taskq_databases, "", PGC_SIGHUP, 0,
							   check_databases, NULL, NULL);
	DefineCustomIntVariable("taskq.workers",
							"Dispatchers per database.",
							NULL, &taskq_workers, 2, 0, 64, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("taskq.batch_size",
							"Tasks a dispatcher claims and commits at once.",
							"At most 64, so that a batch's handler subtransactions fit in the subtransaction cache.",
							&taskq_batch_size, 32, 1, TASKQ_MAX_BATCH, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("taskq.poll_interval",
							"Longest time an idle dispatcher sleeps before looking for due tasks.",
							"A safety net: commits that enqueue wake dispatchers directly.",
							&taskq_poll_interval, 1000, 10, 3600 * 1000, PGC_SIGHUP,
							GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("taskq.executors",
							   "Executors: pools of dispatchers and the queues each serves.",
							   "'name: queues=q1,q2 workers=N batch_size=N; ...'; the executor \"default\" serves every other queue.",
							   &taskq_executors, "", PGC_SIGHUP, 0,
							   taskq_check_executors, taskq_assign_executors, NULL);
	DefineCustomBoolVariable("taskq.enabled",
							 "Whether dispatchers claim tasks.",
							 NULL, &taskq_enabled, true, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("taskq.default_priority",
							"Priority of tasks whose call and handler set none.",
							NULL, &taskq_default_priority, 0,
							TASKQ_PRIORITY_MIN, TASKQ_PRIORITY_MAX, PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomStringVariable("taskq.default_queue",
							   "Queue of tasks whose call and handler set none.",
							   NULL, &taskq_default_queue, "default", PGC_USERSET, 0,
							   check_queue_name, NULL, NULL);
	DefineCustomIntVariable("taskq.default_max_attempts",
							"Attempts of tasks whose call and handler set none.",
							NULL, &taskq_default_max_attempts, 5, 1, 1000, PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("taskq.default_timeout",
							"Handler timeout of tasks whose call and handler set none.",
							NULL, &taskq_default_timeout, 5 * 60 * 1000, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomEnumVariable("taskq.default_mode",
							 "Mode of tasks whose call sets none: async (through the workers) or sync (now, in the caller's transaction).",
							 NULL, &taskq_default_mode, TASKQ_MODE_ASYNC, mode_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("taskq.require_enqueue",
							 "Forces mode async even when sync is asked for.",
							 NULL, &taskq_require_enqueue, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomEnumVariable("taskq.policy",
							 "What enqueue() does: dispatch, drop (write nothing) or assert_none (raise an error).",
							 NULL, &taskq_policy, TASKQ_POLICY_DISPATCH, policy_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("taskq.block_handlers",
							   "Handlers whose enqueue() calls are dropped.",
							   "A comma-separated list of handler names.",
							   &taskq_block_handlers, "", PGC_USERSET, 0,
							   check_handler_list, NULL, NULL);
	DefineCustomBoolVariable("taskq.synchronous_commit",
							 "Whether dispatchers wait for the WAL flush when they commit a claim or a batch.",
							 "Off (the default), like a subscription's apply worker: a crash may lose the "
							 "last batches' outcomes together with their handlers' effects, and those tasks "
							 "run again.",
							 &taskq_synchronous_commit, false, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("taskq.dry_run",
							 "Dispatchers log what they would do and complete tasks without running them.",
							 NULL, &taskq_dry_run, false, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("taskq.retry_backoff",
							"Delay before the first retry; it doubles with each attempt.",
							NULL, &taskq_retry_backoff, 1000, 1, INT_MAX, PGC_SIGHUP,
							GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("taskq.retry_backoff_max",
							"Longest delay between retries.",
							NULL, &taskq_retry_backoff_max, 60 * 60 * 1000, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("taskq.ack_timeout",
							"How long a notify task waits for ack() before it is delivered again.",
							NULL, &taskq_ack_timeout, 60 * 1000, 10, INT_MAX, PGC_SIGHUP,
							GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("taskq.retention",
							"How long ended tasks are kept before dispatchers remove them.",
							"0 removes them at the next maintenance pass.",
							&taskq_retention, 24 * 60 * 60, 0, INT_MAX, PGC_SIGHUP,
							GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("taskq.interrupt_grace",
							"How long a handler may go on after its timeout or a cancel() interrupted it.",
							"Then the launcher terminates its dispatcher, which is started again at once.",
							&taskq_interrupt_grace, 2000, 100, 3600 * 1000, PGC_SIGHUP,
							GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomBoolVariable("taskq.trace",
							 "Logs one line per enqueue and dispatch decision.",
							 NULL, &taskq_trace, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);

#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("taskq");
#else
	EmitWarningsOnPlaceholders("taskq");
#endif

	if (!taskq_preloaded)
		return;

	taskq_shmem_request();
	taskq_register_launcher();
}
