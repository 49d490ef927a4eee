/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared state: worker slots, commit-time wake-ups, crash suspects and
 *	  outcome counters.
 *
 * Wake-ups.  A commit that enqueued sets the latches of its database's
 * dispatchers from a transaction callback, so pickup never waits for
 * taskq.poll_interval and an application transaction never NOTIFYs (which
 * would serialise commits).  A rollback wakes nobody.  The same holds for
 * everything a backend does at commit (wake-ups, interrupts of cancelled
 * handlers, outcome counts): each request is tagged with the subtransaction
 * that made it, so ROLLBACK TO SAVEPOINT drops it and RELEASE hands it to
 * the parent; only what the top-level commit keeps is done.
 *
 * Crash suspects.  A dispatcher writes the id of the task whose handler it
 * is about to run into its own small file, pg_stat_tmp/taskq_slot_<n>
 * (mapped into memory, so marking costs no system call), and clears it
 * after.  When a handler kills its worker (FATAL) the slot's before-exit
 * callback records the task as a suspect; when the server resets (a crash
 * restart re-creates shared memory) the postmaster reads the files back
 * here.  Every task that was running at a reset is charged, the one whose
 * dispatcher died and those of the dispatchers the postmaster then stopped
 * with SIGQUIT alike: a handler can crash the server from another process
 * (a backend or parallel worker it talks to, a second dispatcher), and
 * only charging every running task bounds the resets it causes.  A marker
 * names one task, and a reset reads each file once, so each task is
 * charged once per reset.  The files of a server that was shut down
 * immediately (SIGQUIT too, but no crash) are read at the next start
 * without their bystanders: a shutdown charges nobody.  Dispatchers charge
 * each suspect one attempt, every crash (DESIGN §6), so a task that keeps
 * killing its worker or the server ends 'failed' after max_attempts,
 * having reset the server at most that often, while the other tasks of
 * its batch are not charged.
 *
 * A planned stop (the launcher's, or an operator's pg_terminate_backend())
 * is not a crash: the dispatcher leaves no suspect, and its task goes back
 * to 'queued' as it was.  Suspects are forgotten when charged, or when the
 * task they name has ended otherwise; the list is bounded, and when full
 * the oldest suspect makes room (with a log line), so that the newest
 * crash is always charged.
 *
 * The files are in pg_stat_tmp because pg_basebackup and pg_rewind copy
 * nothing of its contents (pg_stat_statements keeps its query texts there
 * for the same reason): a standby made from a base backup must not charge,
 * once promoted, a crash to the task a primary's handler was running.
 *
 * Overrunning handlers.  A handler can trap the query_canceled error that
 * its timeout or a cancel() raises and carry on.  taskq_start_task notes
 * when it must have stopped (its timeout plus taskq.interrupt_grace); a
 * committed cancel() brings that forward to grace from now.  The launcher
 * terminates the dispatcher of a handler that still runs then (SIGTERM: a
 * FATAL error, which no handler can trap) after noting why in the slot, so
 * that the dying dispatcher records the task as a timeout suspect, charged
 * as a timed-out attempt and not as a crash, or as nothing after a cancel
 * (the task is 'cancelled' already).  The launcher publishes when it next
 * looks (launcher_pass); a task whose deadline comes sooner wakes it.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xact.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define TASKQ_MARKER_DIR	PG_STAT_TMP_DIR
#define TASKQ_MARKER_PREFIX	"taskq_slot_"
#define TASKQ_LEGACY_MARKER_DIR "pg_taskq"	/* 0.1's, copied by base backups */
#define TASKQ_MAX_SUSPECTS	64
#define TASKQ_MAX_EXT_WAKEUPS 16
#define TASKQ_MAX_COUNTERS	1024
#define TASKQ_CANCEL_RING	64
#define TASKQ_MAX_STARVED	64

/*
 * A dispatcher's crash marker file: the task whose handler runs, or 0, and
 * whether the dispatcher was only a bystander of the server's end (it got
 * SIGQUIT: another process crashed, or an immediate shutdown).
 */
typedef struct TaskqMarker
{
	Oid			dboid;
	int64		task_id;
	int32		bystander;
} TaskqMarker;

/*
 * A cancelled task.  Task ids are per database (each has its own
 * sequence), so a cancel names its database too.
 */
typedef struct TaskqCancel
{
	Oid			dboid;
	int64		task_id;
} TaskqCancel;

typedef struct TaskqSuspect
{
	Oid			dboid;
	int64		task_id;
	TaskqCause	cause;			/* crash or timeout */
	uint64		seq;			/* order of arrival: the oldest is evicted first */
} TaskqSuspect;

typedef struct TaskqShared
{
	LWLock	   *lock;			/* slots and counters */
	slock_t		mutex;			/* launcher, suspects, extension wake-ups */
	pid_t		launcher_pid;
	int			launcher_procno;
	pg_atomic_uint64 launcher_pass; /* when it next checks deadlines */
	int			nsuspects;
	uint64		suspect_seq;
	TaskqSuspect suspects[TASKQ_MAX_SUSPECTS];
	int			next_wakeups;
	Oid			ext_wakeups[TASKQ_MAX_EXT_WAKEUPS];

	/*
	 * Tasks cancelled lately, under lock: a dispatcher about to start one
	 * of its claimed tasks looks here (only when cancel_gen moved), so a
	 * task cancelled after its claim never starts.  See interrupt_task().
	 */
	uint64		cancel_gen;
	TaskqCancel cancel_ring[TASKQ_CANCEL_RING];

	/* dispatchers that have exited since the server started */
	pg_atomic_uint64 dispatcher_exits;

	/*
	 * Databases of taskq.databases where no dispatcher runs because no
	 * background worker slot was free, as the launcher last saw them
	 * (under mutex).  starved_gen moves at each change, so enqueue() reads
	 * one atomic per call and the list only when it changed.
	 */
	pg_atomic_uint32 starved_gen;
	int			nstarved;
	Oid			starved[TASKQ_MAX_STARVED];
	int			nslots;
	TaskqSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} TaskqShared;

typedef struct TaskqCounterKey
{
	Oid			dboid;
	char		queue[TASKQ_NAME_MAXLEN + 1];
	char		handler[TASKQ_NAME_MAXLEN + 1];
} TaskqCounterKey;

typedef struct TaskqCounter
{
	TaskqCounterKey key;
	int64		completed;
	int64		failed;
	int64		retried;
} TaskqCounter;

static TaskqShared *shared = NULL;
static HTAB *counters = NULL;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*
 * This backend's commit-time work: one request per kind, (queue, handler)
 * or task and transaction nesting level, in an array that only grows (kept
 * in TopMemoryContext, emptied at the end of every transaction).
 *
 * Levels never decrease along the array: a request is made at the current
 * level, and every request of a deeper level has been dropped or handed to
 * its parent when its subtransaction ended.  So the requests of the
 * current level are a suffix, and a subtransaction's end touches only that
 * suffix.
 */
typedef enum PendingKind
{
	PENDING_WAKE,				/* wake dispatchers; value: tasks or TASKQ_WAKE_ALL */
	PENDING_LAUNCHER,			/* wake the launcher */
	PENDING_INTERRUPT,			/* interrupt a cancelled task; value: its id */
	PENDING_COUNT,				/* add count to the shared counters */
	PENDING_REWIND				/* rewind the dispatchers' claim cursors */
} PendingKind;

typedef struct PendingRequest
{
	int			level;			/* GetCurrentTransactionNestLevel() that made it */
	PendingKind kind;
	int64		value;
	TaskqCounter count;			/* PENDING_COUNT only */
	TaskqRewind rewind;			/* PENDING_REWIND only */
} PendingRequest;

static bool xact_callback_registered = false;
static PendingRequest *pending = NULL;
static int	npending = 0;
static int	maxpending = 0;

static void flush_counts(void);

/* A dispatcher's crash marker file, mapped. */
static volatile TaskqMarker *suspect_map = NULL;

static Size
shared_size(void)
{
	return add_size(offsetof(TaskqShared, slots),
					mul_size(max_worker_processes, sizeof(TaskqSlot)));
}

static void
shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(add_size(shared_size(),
									hash_estimate_size(TASKQ_MAX_COUNTERS, sizeof(TaskqCounter))));
	RequestNamedLWLockTranche("taskq", 1);
}

/*
 * taskq 0.1 kept its crash markers in PGDATA/pg_taskq, which base backups
 * copy.  Whatever is left there is from before the library was replaced,
 * which took a full restart, so the markers mean nothing now: remove them.
 */
static void
remove_legacy_markers(void)
{
	struct stat st;

	if (stat(TASKQ_LEGACY_MARKER_DIR, &st) != 0 || !S_ISDIR(st.st_mode))
		return;
	if (rmtree(TASKQ_LEGACY_MARKER_DIR, true))
		ereport(LOG,
				(errmsg("taskq: removed directory \"%s\", where taskq 0.1 kept its crash markers",
						TASKQ_LEGACY_MARKER_DIR)));
}

/*
 * Add a suspect (under mutex, or in the postmaster before anyone else can
 * look).  A task already suspected is not added twice: one charge per
 * death.  A full list evicts its oldest entry into *evicted (task_id 0 if
 * none): a suspect that old was most likely left by a database that no
 * dispatcher serves any more, and the newest crash must be charged.
 */
static bool
add_suspect(Oid dboid, int64 task_id, TaskqCause cause, TaskqSuspect *evicted)
{
	TaskqSuspect *s = NULL;
	int			i;

	evicted->task_id = 0;
	for (i = 0; i < shared->nsuspects; i++)
		if (shared->suspects[i].dboid == dboid && shared->suspects[i].task_id == task_id)
			return false;
	if (shared->nsuspects < TASKQ_MAX_SUSPECTS)
		s = &shared->suspects[shared->nsuspects++];
	else
	{
		s = &shared->suspects[0];
		for (i = 1; i < shared->nsuspects; i++)
			if (shared->suspects[i].seq < s->seq)
				s = &shared->suspects[i];
		*evicted = *s;
	}
	s->dboid = dboid;
	s->task_id = task_id;
	s->cause = cause;
	s->seq = ++shared->suspect_seq;
	return true;
}

/* Say which suspect a full list gave up (outside the spinlock). */
static void
log_evicted(const TaskqSuspect *evicted)
{
	if (evicted->task_id != 0)
		ereport(LOG,
				(errmsg("taskq: too many uncharged crash suspects; forgot the oldest, task " INT64_FORMAT " of database %u",
						evicted->task_id, evicted->dboid)));
}

/*
 * Read the crash markers a crashed server left behind, then remove them.
 * Runs in the postmaster when shared memory is created: at a crash reset
 * every marked task is a suspect; at the server's start only those whose
 * dispatcher died without SIGQUIT (the server was shut down immediately,
 * or crashed and was started by hand).
 */
static void
load_suspect_files(void)
{
	static bool reset = false;	/* shared memory was created before: a crash reset */
	DIR		   *dir;
	struct dirent *de;
	TaskqSuspect evicted;

	remove_legacy_markers();
	if (MakePGDirectory(TASKQ_MARKER_DIR) != 0 && errno != EEXIST)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("taskq: could not create directory \"%s\": %m", TASKQ_MARKER_DIR)));
		return;
	}
	dir = AllocateDir(TASKQ_MARKER_DIR);
	while ((de = ReadDir(dir, TASKQ_MARKER_DIR)) != NULL)
	{
		char		path[MAXPGPATH];
		TaskqMarker m;
		int			fd;
		ssize_t		n;

		if (strncmp(de->d_name, TASKQ_MARKER_PREFIX, strlen(TASKQ_MARKER_PREFIX)) != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", TASKQ_MARKER_DIR, de->d_name);
		fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
		if (fd < 0)
			continue;
		n = read(fd, &m, sizeof(m));
		CloseTransientFile(fd);
		unlink(path);
		if (n != sizeof(m) || m.task_id == 0 || (m.bystander && !reset))
			continue;
		(void) add_suspect(m.dboid, m.task_id, TASKQ_CAUSE_CRASH, &evicted);
		log_evicted(&evicted);
		ereport(LOG,
				(errmsg(m.bystander ?
						"taskq: task " INT64_FORMAT " was running when the server reset; its crash will be counted when a dispatcher starts" :
						"taskq: task " INT64_FORMAT " was running when a dispatcher died; its crash will be counted when a dispatcher starts",
						m.task_id)));
	}
	FreeDir(dir);
	reset = true;				/* the next creation in this postmaster is a reset */
}

static void
shmem_startup(void)
{
	int			i;
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("taskq", shared_size(), &found);
	if (!found)
	{
		memset(shared, 0, shared_size());
		shared->lock = &(GetNamedLWLockTranche("taskq"))->lock;
		SpinLockInit(&shared->mutex);
		shared->nslots = max_worker_processes;
		for (i = 0; i < shared->nslots; i++)
		{
			pg_atomic_init_u32(&shared->slots[i].wake_pending, 0);
			pg_atomic_init_u64(&shared->slots[i].wakeups, 0);
			SpinLockInit(&shared->slots[i].rewind_mutex);
		}
		pg_atomic_init_u64(&shared->dispatcher_exits, 0);
		pg_atomic_init_u64(&shared->launcher_pass, 0);
		pg_atomic_init_u32(&shared->starved_gen, 0);
		load_suspect_files();
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(TaskqCounterKey);
	info.entrysize = sizeof(TaskqCounter);
	counters = ShmemInitHash("taskq counters", TASKQ_MAX_COUNTERS, TASKQ_MAX_COUNTERS,
							 &info, HASH_ELEM | HASH_BLOBS);
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Called from _PG_init when preloaded.
 */
void
taskq_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
#else
	shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
}

/*
 * Whether shared state exists (false when not preloaded).
 */
static inline bool
have_shared(void)
{
	return shared != NULL;
}

LWLock *
taskq_lock(void)
{
	return shared->lock;
}

int
taskq_slot_count(void)
{
	return have_shared() ? shared->nslots : 0;
}

TaskqSlot *
taskq_slot(int i)
{
	Assert(i >= 0 && i < shared->nslots);
	return &shared->slots[i];
}

/* ----------------------------------------------------------------
 * The launcher
 * ----------------------------------------------------------------
 */

void
taskq_set_launcher(bool alive)
{
	SpinLockAcquire(&shared->mutex);
	shared->launcher_pid = alive ? MyProcPid : 0;
	shared->launcher_procno = alive ? MyProc->pgprocno : -1;
	SpinLockRelease(&shared->mutex);
}

pid_t
taskq_launcher_pid(void)
{
	pid_t		pid;

	if (!have_shared())
		return 0;
	SpinLockAcquire(&shared->mutex);
	pid = shared->launcher_pid;
	SpinLockRelease(&shared->mutex);
	return pid;
}

/*
 * The launcher is about to sleep until next (DT_NOEND while it looks at
 * the slots): a handler whose deadline comes sooner must wake it.
 */
void
taskq_set_launcher_pass(TimestampTz next)
{
	(void) pg_atomic_exchange_u64(&shared->launcher_pass, (uint64) next);
}

static void
wake_launcher(void)
{
	int			procno;

	if (!have_shared())
		return;
	SpinLockAcquire(&shared->mutex);
	procno = shared->launcher_pid != 0 ? shared->launcher_procno : -1;
	SpinLockRelease(&shared->mutex);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/*
 * Record that dboid now has the extension; the launcher asks for each
 * database whether that happened since it last looked.
 */
static void
note_extension_wakeup(Oid dboid)
{
	SpinLockAcquire(&shared->mutex);
	if (shared->next_wakeups < TASKQ_MAX_EXT_WAKEUPS)
		shared->ext_wakeups[shared->next_wakeups++] = dboid;
	SpinLockRelease(&shared->mutex);
}

bool
taskq_take_extension_wakeup(Oid dboid)
{
	bool		found = false;
	int			i;

	SpinLockAcquire(&shared->mutex);
	for (i = 0; i < shared->next_wakeups; i++)
	{
		if (shared->ext_wakeups[i] == dboid)
		{
			shared->ext_wakeups[i] = shared->ext_wakeups[--shared->next_wakeups];
			found = true;
			break;
		}
	}
	SpinLockRelease(&shared->mutex);
	return found;
}

/*
 * The launcher publishes the databases whose dispatchers all failed to
 * start for want of a background worker slot (at most TASKQ_MAX_STARVED).
 */
void
taskq_set_starved(const Oid *dboids, int n)
{
	bool		changed;

	n = Min(n, TASKQ_MAX_STARVED);
	SpinLockAcquire(&shared->mutex);
	changed = n != shared->nstarved ||
		memcmp(shared->starved, dboids, sizeof(Oid) * n) != 0;
	if (changed)
	{
		memcpy(shared->starved, dboids, sizeof(Oid) * n);
		shared->nstarved = n;
	}
	SpinLockRelease(&shared->mutex);
	if (changed)
		pg_atomic_fetch_add_u32(&shared->starved_gen, 1);
}

/*
 * Whether dboid is among the starved databases, looked up only when the
 * launcher changed the list since *seen_gen (false otherwise): enqueue's
 * hot path pays one atomic read.
 */
bool
taskq_database_starved(Oid dboid, uint32 *seen_gen)
{
	uint32		gen;
	bool		found = false;
	int			i;

	if (!have_shared())
		return false;
	gen = pg_atomic_read_u32(&shared->starved_gen);
	if (gen == *seen_gen)
		return false;
	*seen_gen = gen;
	SpinLockAcquire(&shared->mutex);
	for (i = 0; i < shared->nstarved && !found; i++)
		found = shared->starved[i] == dboid;
	SpinLockRelease(&shared->mutex);
	return found;
}

/* ----------------------------------------------------------------
 * Commit-time wake-ups and interrupts
 * ----------------------------------------------------------------
 */

/*
 * A queue's name as a rewind names it: a hash, never 0 (which means every
 * queue).  Two queues that collide only rewind each other's cursors.
 */
uint32
taskq_queue_hash(const char *queue)
{
	uint32		h = hash_bytes((const unsigned char *) queue, strlen(queue));

	return h == 0 ? 1 : h;
}

/*
 * Merge rewind r into *into: the earlier key in dispatch order (higher
 * priority first, then earlier run_at), for one queue or, when they name
 * different queues, every queue.
 */
void
taskq_merge_rewind(TaskqRewind *into, const TaskqRewind *r)
{
	if (!r->set)
		return;
	if (!into->set)
	{
		*into = *r;
		return;
	}
	if (into->queue_hash != r->queue_hash)
		into->queue_hash = 0;
	if (r->priority > into->priority ||
		(r->priority == into->priority && r->run_at < into->run_at))
	{
		into->priority = r->priority;
		into->run_at = r->run_at;
	}
}

/*
 * After our commit made tasks claimable, merge where they are in dispatch
 * order into the rewind of every dispatcher of dboid (cursors.c says why).
 * Our commit is visible before we write: a claim that takes the rewind
 * before this has its snapshot after it and sees the tasks from wherever
 * it reads; one that takes it later reads from the rewound key.  Slots are
 * chosen without the lock: a slot being handed out meanwhile starts with
 * no cursor, and a stray rewind only makes one claim read more.
 */
static void
rewind_dispatchers(Oid dboid, const TaskqRewind *rw)
{
	int			i;

	for (i = 0; i < shared->nslots; i++)
	{
		TaskqSlot  *slot = &shared->slots[i];

		if (!slot->in_use || slot->dboid != dboid)
			continue;
		SpinLockAcquire(&slot->rewind_mutex);
		taskq_merge_rewind(&slot->rewind, rw);
		SpinLockRelease(&slot->rewind_mutex);
	}
}

/* A claim takes its slot's rewinds (cursors.c), before its snapshot. */
void
taskq_take_rewind(TaskqSlot *slot, TaskqRewind *out)
{
	SpinLockAcquire(&slot->rewind_mutex);
	*out = slot->rewind;
	slot->rewind.set = false;
	SpinLockRelease(&slot->rewind_mutex);
}

/*
 * Clear a slot the launcher hands out: everything but the rewind's
 * spinlock, which a committer may hold (rewind_dispatchers).
 */
void
taskq_clear_slot(TaskqSlot *slot)
{
	memset(slot, 0, offsetof(TaskqSlot, rewind_mutex));
	SpinLockAcquire(&slot->rewind_mutex);
	slot->rewind.set = false;
	SpinLockRelease(&slot->rewind_mutex);
}

/*
 * Wake the dispatchers of dboid for ntasks newly claimable tasks
 * (TASKQ_WAKE_ALL: an unknown number): set wake_pending, then the latch.
 * A dispatcher clears wake_pending before its claim takes its snapshot,
 * so a set flag after a batch means a commit it may not have seen (the
 * latch alone does not say so: a handler's pg_sleep resets it).
 *
 * Every busy dispatcher is woken: that costs it nothing, and one whose
 * claim began before our commit then claims again instead of going to
 * sleep.  Of the idle ones, in each executor (the commit does not say
 * which queues it wrote to, so every executor looks),
 * only as many as the tasks need batches: waking both of two sleeping
 * dispatchers for one task costs a second, empty claim on a machine whose
 * cores the application is using.  The woken one claims after our commit,
 * so the task is seen whichever dispatchers we leave asleep.
 *
 * Slots are read without the lock: a stale procno only sets some process's
 * latch once, which every latch user tolerates, and a stale state at worst
 * wakes one dispatcher more.
 */
void
taskq_wake_dispatchers(Oid dboid, int ntasks)
{
	int			idle_to_wake;
	int			woken[TASKQ_MAX_POOLS] = {0};
	int			i;

	if (!have_shared())
		return;
	idle_to_wake = ntasks >= TASKQ_WAKE_ALL ? INT_MAX :
		(ntasks + taskq_batch_size - 1) / taskq_batch_size;
	for (i = 0; i < shared->nslots; i++)
	{
		TaskqSlot  *slot = &shared->slots[i];
		int			procno = slot->procno;
		TaskqWorkerState state = slot->state;
		int			pool = Min(Max(slot->pool, 0), TASKQ_MAX_POOLS - 1);

		if (!slot->in_use || slot->dboid != dboid || slot->pid == 0 || procno < 0 ||
			state == TASKQ_STATE_DISABLED)
			continue;
		if (state == TASKQ_STATE_IDLE)
		{
			if (woken[pool] >= idle_to_wake)
				continue;
			woken[pool]++;
		}
		pg_atomic_write_u32(&slot->wake_pending, 1);
		pg_atomic_fetch_add_u64(&slot->wakeups, 1);
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
	}
}

/*
 * A cancelled task: interrupt its handler if a dispatcher runs it now, and
 * note it in the cancel ring for a dispatcher that claimed it but has not
 * started it.  Both happen under the lock that dispatchers take to publish
 * the task they start (taskq_start_task), so either we see the task
 * running and signal it, or the dispatcher sees the cancel and skips it;
 * and a signal never reaches a dispatcher that has moved on.  A handler
 * that traps the interrupt has taskq.interrupt_grace left before the
 * launcher, woken here, terminates its dispatcher.
 */
static void
interrupt_task(Oid dboid, int64 task_id)
{
	int			i;
	bool		running = false;
	TaskqCancel *entry;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	entry = &shared->cancel_ring[shared->cancel_gen % TASKQ_CANCEL_RING];
	entry->dboid = dboid;
	entry->task_id = task_id;
	shared->cancel_gen++;
	for (i = 0; i < shared->nslots; i++)
	{
		TaskqSlot  *slot = &shared->slots[i];

		if (slot->in_use && slot->pid != 0 && slot->dboid == dboid &&
			slot->current_task == task_id)
		{
			TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															   taskq_interrupt_grace);

			slot->task_cancelled = true;
			slot->task_deadline = Min(slot->task_deadline, deadline);
			running = true;
			if (kill(slot->pid, SIGINT) != 0)
				elog(DEBUG1, "taskq: could not interrupt dispatcher %d: %m", (int) slot->pid);
			break;
		}
	}
	LWLockRelease(shared->lock);
	if (running)
		wake_launcher();
}

/*
 * Publish the task whose handler slot is about to run, unless it was
 * cancelled since we last looked (then false).  *seen_gen is the
 * dispatcher's position in the cancel ring.  The handler must have
 * stopped timeout_ms plus taskq.interrupt_grace from now; the launcher is
 * woken if it would look later than that.
 */
bool
taskq_start_task(TaskqSlot *slot, int64 task_id, const char *queue,
				 int64 timeout_ms, uint64 *seen_gen)
{
	bool		cancelled = false;
	bool		wake = false;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	if (shared->cancel_gen != *seen_gen)
	{
		uint64		g = shared->cancel_gen;
		uint64		from = g - Min(g - *seen_gen, TASKQ_CANCEL_RING);

		/* look at every cancel since we last did, as far as the ring goes */
		for (; from < g && !cancelled; from++)
		{
			TaskqCancel *c = &shared->cancel_ring[from % TASKQ_CANCEL_RING];

			cancelled = c->task_id == task_id && c->dboid == slot->dboid;
		}
	}
	if (!cancelled)
	{
		slot->current_task = task_id;
		slot->task_started_at = now;
		slot->task_deadline = TimestampTzPlusMilliseconds(now, timeout_ms + taskq_interrupt_grace);
		slot->task_cancelled = false;
		strlcpy(slot->current_queue, queue, sizeof(slot->current_queue));
		wake = slot->task_deadline < (TimestampTz) pg_atomic_read_u64(&shared->launcher_pass);
	}
	LWLockRelease(shared->lock);
	if (wake)
		wake_launcher();
	return !cancelled;
}

/* The handler of slot's task has returned (or failed). */
void
taskq_end_task(TaskqSlot *slot)
{
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	slot->current_task = 0;
	LWLockRelease(shared->lock);
}

/*
 * The cancel generation a dispatcher starts from: cancels before its claim
 * committed are already in the rows it claimed from.
 */
uint64
taskq_cancel_generation(void)
{
	uint64		g;

	LWLockAcquire(shared->lock, LW_SHARED);
	g = shared->cancel_gen;
	LWLockRelease(shared->lock);
	return g;
}

/*
 * Find the request of this kind (and task, or counter key) made at level,
 * or make an empty one.  Only the suffix of that level is searched, so the
 * requests of a level are merged: a loop of enqueues makes one wake-up.
 */
static PendingRequest *
pending_request(int level, PendingKind kind, int64 task_id, const TaskqCounterKey *key)
{
	PendingRequest *r;
	int			i;

	for (i = npending - 1; i >= 0 && pending[i].level == level; i--)
	{
		r = &pending[i];
		if (r->kind == kind &&
			(kind != PENDING_INTERRUPT || r->value == task_id) &&
			(kind != PENDING_COUNT || memcmp(&r->count.key, key, sizeof(*key)) == 0))
			return r;
	}
	if (npending == maxpending)
	{
		int			newmax = Max(16, maxpending * 2);

		pending = pending == NULL ?
			MemoryContextAlloc(TopMemoryContext, newmax * sizeof(PendingRequest)) :
			repalloc(pending, newmax * sizeof(PendingRequest));
		maxpending = newmax;
	}
	r = &pending[npending++];
	memset(r, 0, sizeof(*r));
	r->level = level;
	r->kind = kind;
	if (kind == PENDING_INTERRUPT)
		r->value = task_id;
	if (kind == PENDING_COUNT)
		r->count.key = *key;
	return r;
}

/* Merge req into this transaction's requests at level. */
static void
add_request(int level, const PendingRequest *req)
{
	PendingRequest *r = pending_request(level, req->kind, req->value, &req->count.key);

	switch (req->kind)
	{
		case PENDING_WAKE:
			r->value = Min(r->value + req->value, TASKQ_WAKE_ALL);
			break;
		case PENDING_COUNT:
			r->count.completed += req->count.completed;
			r->count.failed += req->count.failed;
			r->count.retried += req->count.retried;
			break;
		case PENDING_REWIND:
			taskq_merge_rewind(&r->rewind, &req->rewind);
			break;
		case PENDING_LAUNCHER:
		case PENDING_INTERRUPT:
			break;
	}
}

/* The index of the first request of level or deeper. */
static int
first_at_level(int level)
{
	int			i = npending;

	while (i > 0 && pending[i - 1].level >= level)
		i--;
	return i;
}

/*
 * A subtransaction ends: an abort drops its requests (a cancel rolled back
 * to a savepoint interrupts nobody), a commit hands them to the parent.
 */
static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	int			from = first_at_level(level);
	int			end = npending;
	int			i;

	switch (event)
	{
		case SUBXACT_EVENT_ABORT_SUB:
			npending = from;
			break;
		case SUBXACT_EVENT_COMMIT_SUB:

			/*
			 * Re-add each at the parent's level.  Each makes at most one new
			 * request, at an index no later than its own, so copy it first.
			 */
			npending = from;
			for (i = from; i < end; i++)
			{
				PendingRequest req = pending[i];

				add_request(level - 1, &req);
			}
			break;
		default:
			break;
	}
}

/* At the top-level commit, do what the transaction kept; then forget it. */
static void
xact_callback(XactEvent event, void *arg)
{
	TaskqRewind rewind;
	int			wake = 0;
	bool		launcher = false;
	int			i;

	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (!have_shared())
				break;
			memset(&rewind, 0, sizeof(rewind));
			for (i = 0; i < npending; i++)
			{
				if (pending[i].kind == PENDING_REWIND)
					taskq_merge_rewind(&rewind, &pending[i].rewind);
				else if (pending[i].kind == PENDING_WAKE)
					wake = Min((int64) wake + pending[i].value, TASKQ_WAKE_ALL);
				else if (pending[i].kind == PENDING_LAUNCHER)
					launcher = true;
				else if (pending[i].kind == PENDING_INTERRUPT)
					interrupt_task(MyDatabaseId, pending[i].value);
			}
			/* before the latches: a woken claim must see the rewind */
			if (rewind.set)
				rewind_dispatchers(MyDatabaseId, &rewind);
			if (wake > 0)
				taskq_wake_dispatchers(MyDatabaseId, wake);
			if (launcher)
			{
				note_extension_wakeup(MyDatabaseId);
				wake_launcher();
			}
			flush_counts();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			break;
		default:
			return;
	}
	npending = 0;
}

static void
ensure_xact_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(xact_callback, NULL);
		RegisterSubXactCallback(subxact_callback, NULL);
		xact_callback_registered = true;
	}
}

/* A request of the current (sub)transaction. */
static void
request_at_commit(PendingKind kind, int64 value, const TaskqCounterKey *key,
				  int64 completed, int64 failed, int64 retried)
{
	PendingRequest req;

	ensure_xact_callback();
	memset(&req, 0, sizeof(req));
	req.kind = kind;
	req.value = value;
	if (key != NULL)
		req.count.key = *key;
	req.count.completed = completed;
	req.count.failed = failed;
	req.count.retried = retried;
	add_request(GetCurrentTransactionNestLevel(), &req);
}

/* At commit, merge rw into the claim cursors' rewinds (see rewind_dispatchers). */
static void
request_rewind_at_commit(const TaskqRewind *rw)
{
	PendingRequest req;

	ensure_xact_callback();
	memset(&req, 0, sizeof(req));
	req.kind = PENDING_REWIND;
	req.rewind = *rw;
	add_request(GetCurrentTransactionNestLevel(), &req);
}

/*
 * At commit, wake dispatchers for ntasks more tasks (or TASKQ_WAKE_ALL)
 * that this transaction made claimable in some way other than enqueuing
 * them (a retry, a release, a resumed queue): their place in dispatch
 * order is unknown here, so every claim cursor is rewound to the start.
 */
void
taskq_request_wakeup_at_commit(int ntasks)
{
	TaskqRewind all = {.set = true, .queue_hash = 0, .priority = TASKQ_REWIND_ALL};

	request_at_commit(PENDING_WAKE, Min(ntasks, TASKQ_WAKE_ALL), NULL, 0, 0, 0);
	request_rewind_at_commit(&all);
}

/*
 * At commit, rewind the dispatchers' cursors of queue to (priority,
 * run_at), for a task this transaction made claimable there, without
 * waking them: a retry due after its backoff.
 */
void
taskq_request_rewind_at_commit(const char *queue, int priority, TimestampTz run_at)
{
	TaskqRewind rw = {.set = true, .queue_hash = taskq_queue_hash(queue),
	.priority = priority, .run_at = run_at};

	request_rewind_at_commit(&rw);
}

/*
 * At commit, wake dispatchers for a task this transaction enqueued into
 * queue with this priority and run_at, and rewind their cursors of that
 * queue to it if it lies behind them (a transaction that began before the
 * tasks a claim has taken since, or a higher priority).  queue NULL: a
 * task that the dispatchers' claim does not read (an external one, or one
 * waiting on its parents, whose release rewinds), which only wakes them.
 */
void
taskq_request_claimable_at_commit(const char *queue, int priority, TimestampTz run_at)
{
	request_at_commit(PENDING_WAKE, 1, NULL, 0, 0, 0);
	if (queue != NULL)
		taskq_request_rewind_at_commit(queue, priority, run_at);
}

void
taskq_request_launcher_wakeup_at_commit(void)
{
	request_at_commit(PENDING_LAUNCHER, 0, NULL, 0, 0, 0);
}

/* At commit, interrupt the handler of task_id, which this transaction cancelled. */
void
taskq_request_interrupt_at_commit(int64 task_id)
{
	request_at_commit(PENDING_INTERRUPT, task_id, NULL, 0, 0, 0);
}

/* ----------------------------------------------------------------
 * Crash suspects
 * ----------------------------------------------------------------
 */

/*
 * Dispatcher exits, counted so that the others know when a dispatcher may
 * have left 'running' tasks behind (dispatcher.c, reap_orphans).  A crash
 * restart starts every dispatcher again, and each reaps when it starts.
 */
void
taskq_count_dispatcher_exit(void)
{
	if (have_shared())
		pg_atomic_fetch_add_u64(&shared->dispatcher_exits, 1);
}

uint64
taskq_dispatcher_exits(void)
{
	return have_shared() ? pg_atomic_read_u64(&shared->dispatcher_exits) : 0;
}

/* A dispatcher died running task_id's handler: why (crash or timeout). */
void
taskq_add_suspect(Oid dboid, int64 task_id, TaskqCause cause)
{
	TaskqSuspect evicted;

	SpinLockAcquire(&shared->mutex);
	(void) add_suspect(dboid, task_id, cause, &evicted);
	SpinLockRelease(&shared->mutex);
	log_evicted(&evicted);
}

/* Why the task's handler ended with its dispatcher; NONE if it did not. */
TaskqCause
taskq_suspect_cause(Oid dboid, int64 task_id)
{
	TaskqCause	cause = TASKQ_CAUSE_NONE;
	int			i;

	if (!have_shared())
		return cause;
	SpinLockAcquire(&shared->mutex);
	for (i = 0; i < shared->nsuspects && cause == TASKQ_CAUSE_NONE; i++)
		if (shared->suspects[i].dboid == dboid && shared->suspects[i].task_id == task_id)
			cause = shared->suspects[i].cause;
	SpinLockRelease(&shared->mutex);
	return cause;
}

/* The suspects of a database, at most max of them, into ids; how many. */
int
taskq_list_suspects(Oid dboid, int64 *ids, int max)
{
	int			n = 0;
	int			i;

	SpinLockAcquire(&shared->mutex);
	for (i = 0; i < shared->nsuspects && n < max; i++)
		if (shared->suspects[i].dboid == dboid)
			ids[n++] = shared->suspects[i].task_id;
	SpinLockRelease(&shared->mutex);
	return n;
}

/*
 * Forget the suspects of dboid that ids names: charged, or resolved
 * otherwise (their task ended without them, or is gone).
 */
void
taskq_forget_suspects(Oid dboid, const int64 *ids, int n)
{
	int			i,
				j;

	SpinLockAcquire(&shared->mutex);
	for (j = 0; j < n; j++)
	{
		for (i = 0; i < shared->nsuspects; i++)
		{
			if (shared->suspects[i].dboid == dboid && shared->suspects[i].task_id == ids[j])
			{
				shared->suspects[i] = shared->suspects[--shared->nsuspects];
				break;
			}
		}
	}
	SpinLockRelease(&shared->mutex);
}

void
taskq_suspect_file_open(int slot)
{
	char		path[MAXPGPATH];
	int			fd;

	(void) MakePGDirectory(TASKQ_MARKER_DIR);
	snprintf(path, sizeof(path), "%s/" TASKQ_MARKER_PREFIX "%d", TASKQ_MARKER_DIR, slot);
	fd = BasicOpenFile(path, O_RDWR | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0 || ftruncate(fd, sizeof(TaskqMarker)) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("taskq: could not create \"%s\": %m", path)));
	suspect_map = mmap(NULL, sizeof(TaskqMarker), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (suspect_map == MAP_FAILED)
	{
		suspect_map = NULL;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("taskq: could not map \"%s\": %m", path)));
	}
}

/*
 * SIGQUIT: the server is going down around this dispatcher (another
 * process crashed, or an immediate shutdown).  The marker stays, flagged:
 * a reset charges it (see load_suspect_files), a shutdown does not.
 * Async-signal-safe: one store.
 */
void
taskq_suspect_file_mark_bystander(void)
{
	if (suspect_map != NULL)
		suspect_map->bystander = 1;
}

/*
 * Record (or, with task_id 0, clear) the task whose handler is running.
 * The file is mapped shared, so this is two stores, no system call; the
 * page survives a process crash (it is the kernel's), not an OS crash,
 * which loses the handler's uncommitted effects and its claim alike.
 * Async-signal-safe: the SIGQUIT handler calls it.
 */
void
taskq_suspect_file_write(Oid dboid, int64 task_id)
{
	if (suspect_map == NULL)
		return;
	suspect_map->dboid = dboid;
	pg_compiler_barrier();
	suspect_map->task_id = task_id;
}

/*
 * A dispatcher exits: clear its marker and unmap it.  The file stays for
 * the next dispatcher of the slot (an empty marker means nothing); removing
 * it could remove the file that dispatcher has already opened, whose
 * markers the postmaster would then never see.
 */
void
taskq_suspect_file_close(void)
{
	if (suspect_map == NULL)
		return;
	taskq_suspect_file_write(InvalidOid, 0);
	munmap((void *) suspect_map, sizeof(TaskqMarker));
	suspect_map = NULL;
}

/* ----------------------------------------------------------------
 * Outcome counters since start, per database, queue and handler
 * ----------------------------------------------------------------
 */

/*
 * Count outcomes.  Counts wait in this backend until its transaction
 * commits, so rolled-back work is never counted, not even work rolled back
 * to a savepoint (and a dispatcher takes the lock once per transaction,
 * not once per task).
 */
void
taskq_count_outcome(Oid dboid, const char *queue, const char *handler,
					int64 completed, int64 failed, int64 retried)
{
	TaskqCounterKey key;

	if (!have_shared())
		return;
	memset(&key, 0, sizeof(key));	/* the shared table hashes its bytes */
	key.dboid = dboid;
	strlcpy(key.queue, queue, sizeof(key.queue));
	strlcpy(key.handler, handler, sizeof(key.handler));
	request_at_commit(PENDING_COUNT, 0, &key, completed, failed, retried);
}

/* At commit: add this transaction's counts to the shared counters. */
static void
flush_counts(void)
{
	bool		locked = false;
	int			i;

	for (i = 0; i < npending; i++)
	{
		TaskqCounterKey key = pending[i].count.key;
		TaskqCounter *c;
		bool		found;

		if (pending[i].kind != PENDING_COUNT)
			continue;
		if (!locked)
			LWLockAcquire(shared->lock, LW_EXCLUSIVE);
		locked = true;
		c = hash_search(counters, &key, HASH_ENTER_NULL, &found);
		if (c == NULL)
		{
			/* table full: count under a catch-all key rather than lose it */
			memset(key.queue, 0, sizeof(key.queue));
			memset(key.handler, 0, sizeof(key.handler));
			strlcpy(key.queue, "(other)", sizeof(key.queue));
			strlcpy(key.handler, "(other)", sizeof(key.handler));
			c = hash_search(counters, &key, HASH_FIND, &found);
		}
		if (c == NULL)
			continue;
		if (!found)
			c->completed = c->failed = c->retried = 0;
		c->completed += pending[i].count.completed;
		c->failed += pending[i].count.failed;
		c->retried += pending[i].count.retried;
	}
	if (locked)
		LWLockRelease(shared->lock);
}

int
taskq_read_counters(Oid dboid, Tuplestorestate *store, TupleDesc desc)
{
	HASH_SEQ_STATUS seq;
	TaskqCounter *c;
	int			n = 0;

	if (!have_shared())
		return 0;
	LWLockAcquire(shared->lock, LW_SHARED);
	hash_seq_init(&seq, counters);
	while ((c = hash_seq_search(&seq)) != NULL)
	{
		Datum		values[5];
		bool		nulls[5] = {false};

		if (c->key.dboid != dboid)
			continue;
		values[0] = CStringGetTextDatum(c->key.queue);
		values[1] = CStringGetTextDatum(c->key.handler);
		values[2] = Int64GetDatum(c->completed);
		values[3] = Int64GetDatum(c->failed);
		values[4] = Int64GetDatum(c->retried);
		tuplestore_putvalues(store, desc, values, nulls);
		n++;
	}
	LWLockRelease(shared->lock);
	return n;
}
