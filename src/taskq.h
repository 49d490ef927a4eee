/*-------------------------------------------------------------------------
 *
 * taskq.h
 *	  What the files of taskq may use of each other.
 *
 * taskq is split by responsibility:
 *
 *	taskq.c       _PG_init and the GUCs
 *	common.c      helpers every SQL-facing file shares (calls no other file)
 *	shmem.c       shared state: worker slots, wake-ups, crash suspects, counters
 *	outbox.c      every statement on taskq.tasks and taskq.queues, and the
 *	              decoding of their rows into C values
 *	enqueue.c     option resolution, validation, policies, the outbox insert
 *	handlers.c    the handler registry
 *	tasks.c       cancel, retry, ack, nack, wait, pause, resume
 *	queues.c      set_queue: queue limits and rate parsing
 *	explain.c     taskq.explain(): why a task is not running
 *	deps.c        dependencies between tasks (after), current_task()
 *	launcher.c    the launcher: which databases get dispatchers
 *	dispatcher.c  the per-database loop: claim, run, record
 *	executors.c   one function per handler kind
 *	logical.c     the logical kind: tasks as logical-decoding messages, no row
 *	monitor.c     the functions behind taskq.workers and taskq.stats
 *	cron.c        schedules' text: cron and interval parsing, next fire time (pure)
 *	schedules.c   schedule(), unschedule() and the tick a dispatcher runs
 *	external.c    external workers: claim, heartbeat, wake channels, session leases
 *	pools.c       executors: the worker pools of taskq.executors (calls no other file)
 *
 *-------------------------------------------------------------------------
 */
#ifndef TASKQ_H
#define TASKQ_H

#include "postgres.h"

#include "port/atomics.h"

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "pgtime.h"
#include "access/tupdesc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/tuplestore.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#define TASKQ_SCHEMA			"taskq"
#define TASKQ_VERSION			"0.2"	/* the SQL objects this library serves */
#define TASKQ_NAME_MAXLEN		63	/* handler and queue names, like identifiers */
#define TASKQ_PRIORITY_MIN		(-100)
#define TASKQ_PRIORITY_MAX		100
#define TASKQ_MAX_ATTEMPTS		1000
#define TASKQ_MAX_GROUP_KEY		255	/* bytes of a group_key */
#define TASKQ_MAX_BATCH			64	/* keeps handler subtransactions under the subxid cache */
#define TASKQ_NOTIFY_MAXLEN		7999	/* NOTIFY's payload limit (NAMEDATALEN-independent) */
#define TASKQ_ERROR_MAXLEN		1024	/* stored last_error is cut here */

/*
 * Status tests for our own SQL, with the operator spelled out: statements
 * that run as the table owner must not resolve operators through a
 * caller's search_path.
 */
/*
 * Live is "not ended", so that 'waiting' (added in 0.2, and so unnamable in
 * the update script's index predicates) counts; tasks_dedupe_idx has this
 * predicate, word for word, so that the dedupe lookups can use it.
 */
#define TASKQ_SQL_LIVE	"OPERATOR(pg_catalog.<>) ALL ('{completed,failed,cancelled,timeout,expired}'::taskq.status[])"
#define TASKQ_SQL_ENDED	"OPERATOR(pg_catalog.=) ANY ('{completed,failed,cancelled,timeout,expired}'::taskq.status[])"

/* ----------------------------------------------------------------
 * GUCs (taskq.c)
 * ----------------------------------------------------------------
 */
typedef enum TaskqMode
{
	TASKQ_MODE_ASYNC,
	TASKQ_MODE_SYNC
} TaskqMode;

typedef enum TaskqPolicy
{
	TASKQ_POLICY_DISPATCH,
	TASKQ_POLICY_DROP,
	TASKQ_POLICY_ASSERT_NONE
} TaskqPolicy;

extern char *taskq_databases;
extern int	taskq_workers;
extern int	taskq_batch_size;
extern int	taskq_poll_interval;	/* ms */
extern bool taskq_enabled;
extern int	taskq_default_priority;
extern char *taskq_default_queue;
extern int	taskq_default_max_attempts;
extern int	taskq_default_timeout;	/* ms */
extern int	taskq_default_mode;
extern bool taskq_require_enqueue;
extern int	taskq_policy;
extern char *taskq_block_handlers;
extern bool taskq_dry_run;
extern bool taskq_synchronous_commit;
extern int	taskq_retry_backoff;	/* ms */
extern int	taskq_retry_backoff_max;	/* ms */
extern int	taskq_ack_timeout;		/* ms */
extern int	taskq_retention;		/* s */
extern bool taskq_trace;
extern int	taskq_interrupt_grace;	/* ms */
extern char *taskq_executors;

extern bool taskq_preloaded;	/* loaded through shared_preload_libraries */

/* ----------------------------------------------------------------
 * Shared memory (shmem.c)
 * ----------------------------------------------------------------
 */
typedef enum TaskqWorkerState
{
	TASKQ_STATE_STARTING,
	TASKQ_STATE_IDLE,
	TASKQ_STATE_CLAIMING,
	TASKQ_STATE_RUNNING,
	TASKQ_STATE_MAINTENANCE,
	TASKQ_STATE_DISABLED
} TaskqWorkerState;

/* Why a dispatcher exited, so the launcher knows when to start it again. */
typedef enum TaskqExitReason
{
	TASKQ_EXIT_NONE,			/* still running, or died without saying */
	TASKQ_EXIT_NO_EXTENSION,	/* CREATE EXTENSION taskq has not run there */
	TASKQ_EXIT_WRONG_VERSION,	/* its SQL objects are not TASKQ_VERSION */
	TASKQ_EXIT_DATABASE_BUSY,	/* DROP/CREATE DATABASE wants it gone */
	TASKQ_EXIT_STOPPED,			/* the launcher stopped a handler that overran */
	TASKQ_EXIT_RETIRED,			/* its executor shrank or went: the launcher asked it to leave */
	TASKQ_EXIT_ERROR			/* an error; back off */
} TaskqExitReason;

/*
 * Why a task's handler ended with its dispatcher: the dispatcher died under
 * it (a crash, charged as an attempt and counted in crashes), or the
 * launcher terminated it because the handler ignored its timeout (charged
 * as a timed-out attempt) or a cancel() (the task is already 'cancelled'),
 * or the dispatcher was stopped on purpose (a planned stop: nothing is
 * charged, the task goes back to 'queued').
 */
typedef enum TaskqCause
{
	TASKQ_CAUSE_NONE,
	TASKQ_CAUSE_CRASH,
	TASKQ_CAUSE_TIMEOUT,
	TASKQ_CAUSE_CANCEL,
	TASKQ_CAUSE_STOP
} TaskqCause;

/*
 * Where a dispatcher's claim of a queue must start reading again
 * (cursors.c): a key in dispatch order, priority then run_at.  A commit
 * that made a task of queue_hash claimable with this key behind a cursor
 * sets it in every slot of its database; queue_hash 0 is every queue, and
 * priority TASKQ_REWIND_ALL rewinds the whole queue (the claim reads it
 * from its first index entry).
 */
#define TASKQ_REWIND_ALL	INT_MAX

typedef struct TaskqRewind
{
	bool		set;
	uint32		queue_hash;
	int			priority;
	TimestampTz run_at;
} TaskqRewind;

/*
 * One per dispatcher the launcher may run.  The launcher owns in_use,
 * dboid and index; the dispatcher owns the rest while it lives, except
 * that a committing cancel() brings task_deadline forward (and sets
 * task_cancelled), and the launcher sets stop_task and stop_cause when it
 * terminates a dispatcher whose handler is past task_deadline, or
 * stop_cause alone (TASKQ_CAUSE_STOP) when it stops one on purpose.  Readers
 * take TaskqShared->lock shared; writers take it exclusive, except for
 * the counters, which only the owner writes and monitoring reads torn-free
 * enough on every platform we build for.
 *
 * current_owner is the role that enqueued current_task, last_error_owner
 * the role whose task failed with last_error: taskq.workers shows the task
 * and the error only to roles that may see that role's tasks (monitor.c).
 * A last_error without an owner (InvalidOid) is taskq's own, such as the
 * version found.
 */
typedef struct TaskqSlot
{
	bool		in_use;
	Oid			dboid;
	int			index;			/* which of its executor's workers in its database */
	int			pool;			/* its executor's number when started (wake-ups count per executor) */
	char		executor[TASKQ_NAME_MAXLEN + 1];	/* its executor's name */
	bool		retire;			/* the launcher asks it to leave between batches */
	pid_t		pid;
	int			procno;			/* for SetLatch without looking up the pid */
	TimestampTz started_at;
	TaskqWorkerState state;
	TaskqExitReason exit_reason;
	int64		current_task;	/* 0 when no handler is running */
	Oid			current_owner;	/* the role that enqueued current_task */
	pg_atomic_uint32 wake_pending;	/* a commit woke it since its last claim */
	pg_atomic_uint64 wakeups;	/* commits (and dispatchers) that woke it */
	TimestampTz task_started_at;
	TimestampTz task_deadline;	/* the launcher stops a handler still running then */
	bool		task_cancelled; /* task_deadline is a cancel's, not the timeout's */
	int64		stop_task;		/* the launcher is terminating us for this task */
	TaskqCause	stop_cause;
	char		current_queue[TASKQ_NAME_MAXLEN + 1];
	int64		processed;
	int64		failed;
	char		last_error[256];
	Oid			last_error_owner;	/* the role whose task failed so */
	TimestampTz last_error_at;

	/*
	 * Rewinds of our claim cursors, merged by committing backends under
	 * rewind_mutex and taken by the claim.  Kept last: the launcher clears
	 * a slot it hands out only up to rewind_mutex, which committers may be
	 * holding, and empties rewind under it.
	 */
	slock_t		rewind_mutex;
	TaskqRewind rewind;
} TaskqSlot;

extern void taskq_shmem_request(void);
extern LWLock *taskq_lock(void);
extern int	taskq_slot_count(void);
extern TaskqSlot *taskq_slot(int i);

extern void taskq_set_launcher(bool alive);
extern pid_t taskq_launcher_pid(void);
extern void taskq_set_launcher_pass(TimestampTz next);
extern bool taskq_take_extension_wakeup(Oid dboid);
extern void taskq_set_starved(const Oid *dboids, int n);
extern bool taskq_database_starved(Oid dboid, uint32 *seen_gen);

extern bool taskq_start_task(TaskqSlot *slot, int64 task_id, const char *queue,
							 int64 timeout_ms, uint64 *seen_gen);
extern void taskq_end_task(TaskqSlot *slot);
extern uint64 taskq_cancel_generation(void);
#define TASKQ_WAKE_ALL	1000000	/* wake-ups for an unknown number of tasks */
extern void taskq_wake_dispatchers(Oid dboid, int ntasks);
extern void taskq_request_wakeup_at_commit(int ntasks);
extern void taskq_request_claimable_at_commit(const char *queue, int priority,
											  TimestampTz run_at);
extern void taskq_request_rewind_at_commit(const char *queue, int priority,
										   TimestampTz run_at);
extern void taskq_take_rewind(TaskqSlot *slot, TaskqRewind *out);
extern uint32 taskq_queue_hash(const char *queue);
extern void taskq_merge_rewind(TaskqRewind *into, const TaskqRewind *r);
extern void taskq_clear_slot(TaskqSlot *slot);
extern void taskq_request_launcher_wakeup_at_commit(void);
extern void taskq_request_interrupt_at_commit(int64 task_id);

extern void taskq_add_suspect(Oid dboid, int64 task_id, TaskqCause cause);
extern TaskqCause taskq_suspect_cause(Oid dboid, int64 task_id);
extern int	taskq_list_suspects(Oid dboid, int64 *ids, int max);
extern void taskq_count_dispatcher_exit(void);
extern uint64 taskq_dispatcher_exits(void);
extern void taskq_forget_suspects(Oid dboid, const int64 *ids, int n);
extern void taskq_suspect_file_open(int slot);
extern void taskq_suspect_file_write(Oid dboid, int64 task_id);
extern void taskq_suspect_file_mark_bystander(void);
extern void taskq_suspect_file_close(void);

extern void taskq_count_outcome(Oid dboid, const char *queue, const char *handler,
								int64 completed, int64 failed, int64 retried);
extern int	taskq_read_counters(Oid dboid, Tuplestorestate *store, TupleDesc desc);

/* ----------------------------------------------------------------
 * Common SQL helpers (common.c)
 * ----------------------------------------------------------------
 */

/* Runs SPI as the owner of taskq.tasks, under TASKQ_SAFE_SEARCH_PATH; see common.c. */
typedef struct TaskqAsOwner
{
	Oid			save_userid;
	int			save_sec_context;
	int			gucnest;		/* of the restricted search_path */
} TaskqAsOwner;

/* The search_path of taskq's own statements: nobody's objects but core's. */
#define TASKQ_SAFE_SEARCH_PATH	"pg_catalog, pg_temp"

extern Oid	taskq_caller(void);
extern void taskq_become_owner(TaskqAsOwner *save);
extern void taskq_restore_user(TaskqAsOwner *save);
extern int	taskq_restrict_search_path(void);
extern void taskq_restore_search_path(int nest);
extern SPIPlanPtr taskq_prepare(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes);
extern SPIPlanPtr taskq_prepare_custom(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes);
extern SPIPlanPtr taskq_prepare_generic(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes);
extern void taskq_check_name(const char *what, const char *value);
extern int64 taskq_interval_ms(const char *what, Interval *iv, bool allow_zero);
extern int	taskq_check_priority(int priority);
extern int	taskq_check_max_attempts(int max_attempts);
extern void taskq_check_group_key(const char *key);
extern void taskq_require_arg(FunctionCallInfo fcinfo, int n, const char *what, const char *hint);
extern int64 taskq_check_timeout_ms(int64 timeout_ms);
extern const char *taskq_mode_name(int mode);
extern char *taskq_extension_version(void);
extern int64 taskq_backoff_ms(int attempt);

/* Monitoring and SRF plumbing (monitor.c) */
extern void taskq_materialize(FunctionCallInfo fcinfo, Tuplestorestate **store, TupleDesc *desc);

/* ----------------------------------------------------------------
 * Handler registry (handlers.c)
 * ----------------------------------------------------------------
 */
typedef enum TaskqKind
{
	TASKQ_KIND_FUNCTION,
	TASKQ_KIND_NOTIFY,
	TASKQ_KIND_LOG,
	TASKQ_KIND_LOGICAL,
	TASKQ_KIND_EXTERNAL
} TaskqKind;

/* A handler's registration, as enqueue and dispatch need it. */
typedef struct TaskqHandler
{
	char		name[TASKQ_NAME_MAXLEN + 1];
	TaskqKind	kind;
	char	   *target;			/* palloc'd; canonical function or channel; NULL for external */
	char		queue[TASKQ_NAME_MAXLEN + 1];	/* "" when unset */
	bool		has_priority;
	int			priority;
	bool		has_max_attempts;
	int			max_attempts;
	bool		has_timeout;
	int64		timeout_ms;
	bool		ack;
	bool		enabled;
	Oid			owner;
} TaskqHandler;

extern bool taskq_lookup_handler(const char *name, TaskqHandler *h);
extern bool taskq_lookup_handler_locked(const char *name, TaskqHandler *h);

/* ----------------------------------------------------------------
 * Tasks as the dispatcher and the executors see them
 * ----------------------------------------------------------------
 */
typedef struct TaskqTask
{
	int64		id;
	char	   *handler;
	char	   *queue;
	int			priority;
	int			attempts;		/* before this one */
	int			max_attempts;
	int64		timeout_ms;
	Oid			owner;
	TimestampTz run_at;
	Datum		payload;		/* jsonb, in the batch context */
	Datum		metadata;		/* jsonb or 0 */
	bool		expired;		/* claimed only to be marked expired */
	/* the plain claim's first candidate of this queue it left (cursors.c) */
	bool		skipped;
	int			skip_priority;
	TimestampTz skip_run_at;
	int64		skip_id;
} TaskqTask;

/* ----------------------------------------------------------------
 * Executors (executors.c): run one task's handler inside the caller's
 * (sub)transaction.  On success *out holds the handler's result (or a null
 * one) and the status to record; errors propagate.
 * ----------------------------------------------------------------
 */
typedef struct TaskqOutcome
{
	Datum		result;
	bool		result_null;
	const char *status;			/* 'completed' or 'dispatched' */
} TaskqOutcome;

extern void taskq_execute(TaskqTask *task, TaskqHandler *h, bool sync, TaskqOutcome *out);

/* ----------------------------------------------------------------
 * The outbox's statements (outbox.c): run inside the caller's transaction
 * and SPI connection, under taskq's fixed search_path.
 * ----------------------------------------------------------------
 */

/*
 * What a plain claim skips: paused and limited queues, disabled handlers
 * (text[] datums); and the limited queues, which taskq._claim_queue()
 * claims one by one.
 */
typedef struct TaskqExclusions
{
	int			n;				/* elements of queues and handlers */
	Datum		queues;
	Datum		handlers;
	int			nlimited;
	Datum		limited;		/* not paused, in name order */
} TaskqExclusions;

/*
 * Which queues a claim serves (text[] datums): an executor's named queues,
 * or, with queues = 0, every queue except others (the default executor).
 */
typedef struct TaskqServed
{
	Datum		queues;			/* 0: every queue not in others */
	Datum		others;			/* 0: none */
	int			batch_size;		/* tasks a claim takes at most */
	/* the claim cursors (cursors.c): text[], int4[], timestamptz[] */
	Datum		cursor_queues;
	Datum		cursor_priorities;
	Datum		cursor_run_ats;
	Datum		cursor_ids;		/* int8[] */
} TaskqServed;

extern void taskq_cursors_forget(void);
extern void taskq_cursors_take_rewinds(TaskqSlot *slot);
extern void taskq_cursors_prepare(TaskqServed *served);
extern void taskq_cursors_advance(const TaskqTask *tasks, int n);

/* A task that reaping charged or requeued. */
typedef struct TaskqReaped
{
	int64		id;
	bool		crash;			/* charged as a crash */
	bool		charge;			/* charged an attempt (a crash or a timeout) */
	char	   *status;			/* its status now */
	char	   *queue;
	char	   *handler;
	int			attempts;		/* now */
} TaskqReaped;

/* Called for each task whose lease ran out. */
typedef void (*TaskqLeaseFn) (const char *queue, const char *handler, bool failed);

/*
 * A taskq.queues row whose tasks only taskq._claim_queue() claims: one
 * with limits, aging or group keys.  One condition for every claimant.
 */
/*
 * Dispatch order within a queue that has no group keys (not
 * taskq.queues.grouped): its tasks are (queue, NULL) in tasks_queue_idx
 * and tasks_external_idx, whose order this names in full, so that a
 * claim with "t.queue = ... AND t.group_key IS NULL" reads the index in
 * order instead of sorting (IS NULL does not make the key constant for
 * the planner's ordering).
 */
#define TASKQ_SQL_UNGROUPED_ORDER "t.group_key, t.priority DESC, t.run_at, t.id"

#define TASKQ_QUEUE_LIMITED_SQL \
	"(concurrency IS NOT NULL OR group_concurrency IS NOT NULL" \
	" OR rate_limit IS NOT NULL OR group_rate_limit IS NOT NULL" \
	" OR aging IS NOT NULL OR grouped)"

extern void taskq_outbox_read_exclusions(TaskqExclusions *ex);
extern char *taskq_outbox_claim_sql(const char *filter, const char *limit,
									const char *status, const char *set_more);
extern int	taskq_outbox_claim(const TaskqServed *served, const TaskqExclusions *ex,
							   MemoryContext cxt, TaskqTask **tasks);
extern char **taskq_outbox_limited_queues(const TaskqExclusions *ex);
extern int	taskq_outbox_claim_queue(const char *queue, int max_tasks, int share, Datum skip,
									 MemoryContext cxt, TaskqTask *tasks);
extern void taskq_outbox_forget_claim_plans(void);
extern void taskq_outbox_replan_on_growth(void);
extern TimestampTz taskq_outbox_next_due(TimestampTz *lease);
extern void taskq_outbox_queued_queues(Datum others, void (*fn) (const char *queue));
extern void taskq_outbox_due_since(TimestampTz since,
								   void (*fn) (const char *queue, int priority, TimestampTz run_at));
extern bool taskq_outbox_remove_completed(int64 id);
extern bool taskq_outbox_complete(int64 id, const TaskqOutcome *out, int ack_timeout_ms);
extern bool taskq_outbox_fail(int64 id, const char *error, int64 delay_ms, bool timed_out);
extern int	taskq_outbox_reap(const int64 *suspects, int nsuspects, TaskqReaped **reaped);
extern int	taskq_outbox_ended(const int64 *ids, int n, int64 *ended);
extern void taskq_outbox_delay(int64 id, int64 delay_ms);
extern void taskq_outbox_expire_leases(TaskqLeaseFn each);
extern void taskq_outbox_expire_tasks(void);
extern void taskq_outbox_remove_ended(int retention_s);

/* The API's statements (outbox.c), as tasks.c and enqueue.c call them. */

/* A task row, locked, as cancel(), retry() and nack() need it. */
typedef struct TaskqLockedTask
{
	int64		id;
	char	   *status;
	Oid			owner;
	char	   *handler;
	char	   *queue;
	char	   *dedupe_key;		/* NULL when none */
	int			attempts;
	int			max_attempts;
	bool		lapsed;			/* its lease ran out: no longer the holder's */
} TaskqLockedTask;

/* A task that ack() may complete: locked, with what the counters need. */
typedef struct TaskqAckable
{
	int64		id;
	bool		dispatched;
	char	   *handler;
	char	   *queue;
} TaskqAckable;

/* A row for taskq.tasks, with its options resolved (enqueue.c). */
typedef struct TaskqNewTask
{
	const char *handler;
	const char *queue;
	int			priority;
	const char *status;			/* 'queued', or 'running' for sync mode */
	Jsonb	   *payload;
	Jsonb	   *metadata;		/* or NULL */
	TimestampTz run_at;
	bool		has_expires_at;
	TimestampTz expires_at;
	int			max_attempts;
	int64		timeout_ms;
	Oid			owner;
	text	   *dedupe_key;		/* or NULL */
	text	   *group_key;		/* or NULL */
	bool		external;		/* of an external handler: for claim() */
} TaskqNewTask;

extern bool taskq_outbox_lock_task(int64 id, Oid caller, bool handler_owner_may,
								   TaskqLockedTask *t);
extern int	taskq_outbox_lock_ackable(Datum ids, Oid caller, TaskqAckable **rows);
extern void taskq_outbox_cancel(int64 id);
extern int64 taskq_outbox_live_holder(const char *handler, text *dedupe_key, Oid owner);
extern void taskq_outbox_requeue(int64 id);
extern void taskq_outbox_ack(Datum ids, Datum result, bool result_null);
extern void taskq_outbox_nack(int64 id, const char *error, int64 delay_ms);
extern Datum taskq_outbox_poll(int64 id, bool *found, bool *ended, TransactionId *xmin);
extern void taskq_outbox_set_paused(const char *queue, bool paused);
extern int64 taskq_outbox_insert(const TaskqNewTask *t);
extern void taskq_outbox_mark_grouped(const char *queue);
extern void taskq_outbox_finish_sync(int64 id, const TaskqOutcome *out, int ack_timeout_ms);

/*
 * What a handler kind is (executors.c): everything that differs between
 * kinds is here, so that a new kind is one more row of the table.
 */
typedef struct TaskqKindOps
{
	const char *name;			/* as in taskq.handlers.kind */
	/* registration: check a target, return the form to store (palloc'd) */
	char	   *(*check_target) (const char *target);
	bool		may_skip_ack;	/* register_handler(ack => false) allowed */
	/* enqueue: refuse a task that could never be dispatched; NULL: none */
	void		(*check_task) (const TaskqHandler *h, Jsonb *payload, Jsonb *metadata);
	/* dispatch: run one task, see taskq_execute() */
	void		(*execute) (TaskqTask *task, TaskqHandler *h, TaskqOutcome *out);
} TaskqKindOps;

extern const TaskqKindOps *taskq_kind_ops(TaskqKind kind);
extern TaskqKind taskq_parse_kind(const char *name);
extern const char *taskq_kind_name(TaskqKind kind);
extern const char *taskq_kind_hint(void);
extern Oid	taskq_resolve_function(const char *target, bool missing_ok);

/* ----------------------------------------------------------------
 * The logical kind (logical.c): used by enqueue.c and executors.c; calls
 * no other file of taskq.
 * ----------------------------------------------------------------
 */
extern char *taskq_logical_check_target(const char *target);
extern void taskq_logical_check_call(const char *handler, bool run_after, bool run_at,
									 bool dedupe_key, bool sync);
extern void taskq_logical_refuse_after(const char *handler);
extern int64 taskq_logical_emit(const TaskqHandler *h, TaskqTask *task,
								const TimestampTz *expires_at);
extern void taskq_logical_execute(TaskqTask *task, TaskqHandler *h, TaskqOutcome *out);

/* ----------------------------------------------------------------
 * Dependencies (deps.c): enqueue's after option
 * ----------------------------------------------------------------
 */
typedef struct TaskqDeps
{
	bool		given;			/* after named at least one task */
	int			n;				/* live parents, each once */
	int64	   *parents;
} TaskqDeps;

extern int64 taskq_running_task;	/* whose handler runs here; 0: none */
extern void taskq_deps_resolve(FunctionCallInfo fcinfo, Oid caller, bool sync, TaskqDeps *deps);
extern const char *taskq_deps_status(const TaskqDeps *deps);
extern void taskq_deps_link(const TaskqDeps *deps, int64 child);
extern char *taskq_deps_explain(int64 id);

/* ----------------------------------------------------------------
 * Recurring schedules: their text (cron.c, pure functions) and the
 * SQL API and the tick (schedules.c)
 * ----------------------------------------------------------------
 */
/* A parsed schedule: a cron expression's sets, or an interval. */
typedef struct TaskqCron
{
	int64		interval_us;	/* > 0: an interval schedule; the rest unused */
	uint64		minutes;		/* bit n: minute n matches (0-59) */
	uint32		hours;			/* 0-23 */
	uint32		mdays;			/* 1-31 */
	uint16		months;			/* 1-12 */
	uint8		wdays;			/* 0-6, Sunday 0 */
	bool		dom_star;		/* the field began with '*' (Vixie's day rule) */
	bool		dow_star;
} TaskqCron;

extern void taskq_cron_parse(const char *text, TaskqCron *cron);
extern pg_tz *taskq_cron_zone(const char *name);
extern TimestampTz taskq_cron_next(const TaskqCron *cron, const pg_tz *tz, TimestampTz after);

extern bool taskq_schedules_firer(int slot_index, const char *executor);
extern TimestampTz taskq_schedules_tick(int slot_index, const char *executor);
extern uint64 taskq_schedules_drop_handler(const char *handler);

/* ----------------------------------------------------------------
 * External workers (external.c); the dispatcher calls these in its own
 * transactions and SPI connection.
 * ----------------------------------------------------------------
 */
extern void taskq_external_wake_workers(void);
extern void taskq_external_release_sessions(TaskqLeaseFn each);

/* ----------------------------------------------------------------
 * Executors: the worker pools of taskq.executors (pools.c).  Executor 0
 * is "default", serving every queue that no other one names.
 * ----------------------------------------------------------------
 */
#define TASKQ_MAX_POOLS			33	/* "default" and 32 named ones */
#define TASKQ_MAX_POOL_QUEUES	256	/* queues named in taskq.executors */
#define TASKQ_MAX_POOL_WORKERS	64	/* as taskq.workers */

typedef struct TaskqPool
{
	char		name[TASKQ_NAME_MAXLEN + 1];
	int			workers;
	int			batch_size;		/* 0: taskq.batch_size */
	int			first_queue;	/* in TaskqPools.queues */
	int			nqueues;
} TaskqPool;

/* A parsed taskq.executors, one flat block (a GUC "extra"). */
typedef struct TaskqPools
{
	int			npools;
	TaskqPool	pools[TASKQ_MAX_POOLS];
	int			nqueues;
	char		queues[TASKQ_MAX_POOL_QUEUES][TASKQ_NAME_MAXLEN + 1];
} TaskqPools;

extern bool taskq_check_executors(char **newval, void **extra, GucSource source);
extern void taskq_assign_executors(const char *newval, void *extra);
extern int	taskq_pool_count(void);
extern const char *taskq_pool_name(int i);
extern int	taskq_pool_workers(int i);
extern int	taskq_pool_batch_size(int i);
extern int	taskq_pool_total_workers(void);
extern int	taskq_pool_find(const char *name);
extern const char *taskq_queue_executor(const char *queue);
extern void taskq_pool_served(int i, TaskqServed *served);

/* ----------------------------------------------------------------
 * Workers
 * ----------------------------------------------------------------
 */
extern void taskq_register_launcher(void);
extern PGDLLEXPORT void taskq_launcher_main(Datum arg);
extern PGDLLEXPORT void taskq_dispatcher_main(Datum arg);

#endif							/* TASKQ_H */
