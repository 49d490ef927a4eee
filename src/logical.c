/*-------------------------------------------------------------------------
 *
 * logical.c
 *	  The logical kind: a task as a transactional logical-decoding message
 *	  (what pg_logical_emit_message(true, prefix, json) writes) instead of
 *	  a row of taskq.tasks.  A logical-decoding client such as Debezium's
 *	  PostgreSQL connector (pgoutput, messages on) relays the tasks of
 *	  committed transactions in commit order; an aborted transaction's
 *	  messages are never decoded.  Nothing is claimed, updated or vacuumed,
 *	  and no dispatcher is woken.
 *
 * The message is the JSON document a notify handler sends, with the same
 * keys so that one consumer reads both, plus what only this kind needs
 * (expires_at, owner); see task_message().  The task id comes from
 * taskq.tasks_id_seq, as a row's would, so ids stay unique across kinds.
 *
 * enqueue.c decides that a task goes here (taskq_logical_emit) and refuses
 * the options that need a row first (taskq_logical_check_call);
 * executors.c lists the kind.  This file calls no other file of taskq.
 *
 *-------------------------------------------------------------------------
 */
#include "taskq.h"

#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "replication/message.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

/*
 * A prefix is at most this long and made of Kafka's topic-name characters,
 * so that a connector can route it to a topic of the same name, and
 * without the comma that separates Debezium's message.prefix.include.list.
 */
#define LOGICAL_PREFIX_MAXLEN	TASKQ_NAME_MAXLEN

/* Whether c may appear in a prefix (see above). */
static bool
prefix_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

/*
 * Registration: the target is the message prefix, 1 to 63 bytes of
 * A-Z a-z 0-9 . _ -.  Stored as given.
 */
char *
taskq_logical_check_target(const char *target)
{
	size_t		len = strlen(target);
	const char *s;

	if (len == 0 || len > LOGICAL_PREFIX_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid message prefix \"%s\"", target),
				 errdetail("A logical handler's prefix must be 1 to %d bytes long; this one is %zu.",
						   LOGICAL_PREFIX_MAXLEN, len),
				 errhint("Use letters, digits, '.', '_' and '-', such as 'taskq.orders'.")));
	for (s = target; *s; s++)
		if (!prefix_char_ok(*s))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid message prefix \"%s\"", target),
					 errdetail("The prefix contains the character \"%.*s\" (byte 0x%02x), which is not allowed.",
							   pg_mblen(s), s, (unsigned char) *s),
					 errhint("Use letters, digits, '.', '_' and '-' (the characters of a Kafka topic name), such as 'taskq.orders'.")));
	if (!XLogLogicalInfoActive())
		ereport(WARNING,
				(errmsg("wal_level is not logical: enqueue() for logical handler prefix \"%s\" will fail until it is",
						target),
				 errhint("Set wal_level = logical in postgresql.conf and restart the server.")));
	return pstrdup(target);
}

/*
 * Refuse, for a logical handler, the call's options that need a row: a
 * later start (run_after, run_at), deduplication against live rows
 * (dedupe_key) and running the handler now (mode => 'sync').  Only what
 * the call gives explicitly is refused; taskq.default_mode = 'sync' does
 * not apply to this kind, as no handler runs in the database.
 */
void
taskq_logical_check_call(const char *handler, bool run_after, bool run_at,
						 bool dedupe_key, bool sync)
{
	const char *option = run_after ? "run_after" : run_at ? "run_at" :
		dedupe_key ? "dedupe_key" : sync ? "mode => 'sync'" : NULL;

	if (option == NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s cannot be used with logical handler \"%s\"", option, handler),
			 errdetail("A logical handler's task is a logical-decoding message written in the enqueuing transaction; there is no row to %s.",
					   sync ? "run now" : dedupe_key ? "deduplicate against" : "delay"),
			 errhint(sync ? "Leave mode out (or use 'async'); the consumer receives the task when the transaction commits." :
					 dedupe_key ? "Leave dedupe_key out and deduplicate in the consumer by a key in the payload." :
					 "Leave run_after and run_at out, or register a function or notify handler for delayed tasks.")));
}

/*
 * after: a message has no row to hold back until its parents complete,
 * and once written it is delivered at commit.  Refused like the options
 * above rather than ignored, so that no one believes the order holds.
 */
void
taskq_logical_refuse_after(const char *handler)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("after cannot be used with logical handler \"%s\"", handler),
			 errdetail("A logical handler's task is a logical-decoding message written in the enqueuing transaction; there is no row to hold back until other tasks complete."),
			 errhint("Enqueue the logical task from a handler of the last task it depends on, or leave after out.")));
}

/*
 * The message's content: the notify kind's document (id, handler, queue,
 * attempt, priority, ack, payload, metadata), where attempt is always 1
 * and ack always false (nothing is retried or acked in the database), and
 * expires_at (null when none) and owner, the enqueuing role, which a
 * consumer may check: decoding the messages needs the REPLICATION
 * privilege, so the role's name reaches only privileged readers.
 */
static char *
task_message(const TaskqTask *task, const TimestampTz *expires_at, Size *len)
{
	StringInfoData buf;
	Jsonb	   *payload = DatumGetJsonbP(task->payload);
	Jsonb	   *metadata = task->metadata ? DatumGetJsonbP(task->metadata) : NULL;
	const char *owner = GetUserNameFromId(task->owner, true);

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"id\": " INT64_FORMAT ", \"handler\": ", task->id);
	escape_json(&buf, task->handler);
	appendStringInfoString(&buf, ", \"queue\": ");
	escape_json(&buf, task->queue);
	appendStringInfo(&buf, ", \"attempt\": %d, \"priority\": %d, \"ack\": false, \"payload\": ",
					 task->attempts + 1, task->priority);
	(void) JsonbToCString(&buf, &payload->root, VARSIZE(payload));
	appendStringInfoString(&buf, ", \"metadata\": ");
	if (metadata)
		(void) JsonbToCString(&buf, &metadata->root, VARSIZE(metadata));
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoString(&buf, ", \"expires_at\": ");
	if (expires_at)
	{
		char		ts[MAXDATELEN + 1];

		/* ISO 8601, as to_json() writes it, whatever the DateStyle */
		appendStringInfo(&buf, "\"%s\"",
						 JsonEncodeDateTime(ts, TimestampTzGetDatum(*expires_at),
											TIMESTAMPTZOID, NULL));
	}
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoString(&buf, ", \"owner\": ");
	if (owner)
		escape_json(&buf, owner);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoChar(&buf, '}');
	*len = buf.len;
	return buf.data;
}

/*
 * A new task id from taskq.tasks_id_seq.  The caller need not have USAGE
 * on the sequence (no application role has): enqueue() takes ids for the
 * roles it serves, as its insert does as the table's owner.
 */
static int64
next_task_id(void)
{
	Oid			nsp = get_namespace_oid(TASKQ_SCHEMA, false);
	Oid			seq = get_relname_relid("tasks_id_seq", nsp);

	if (!OidIsValid(seq))
		elog(ERROR, "taskq: sequence taskq.tasks_id_seq is missing");
	return nextval_internal(seq, false);
}

/*
 * Without wal_level = logical nothing could ever decode the message, so
 * the task would be lost at commit: refuse it.
 */
static void
require_logical_wal(const char *handler)
{
	if (!XLogLogicalInfoActive())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("logical handler \"%s\" needs wal_level = logical", handler),
				 errdetail("wal_level is \"%s\"; no logical-decoding client could read the task.",
						   GetConfigOption("wal_level", false, false)),
				 errhint("Set wal_level = logical in postgresql.conf and restart the server.")));
}

/*
 * Write one task of a logical handler as a transactional logical message
 * and return its id.  A disabled handler is refused as in sync mode: its task cannot wait.
 * task->id is set here; the rest of task is the resolved options.
 */
int64
taskq_logical_emit(const TaskqHandler *h, TaskqTask *task, const TimestampTz *expires_at)
{
	char	   *msg;
	Size		len;

	require_logical_wal(h->name);
	if (!h->enabled)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("handler \"%s\" is disabled", h->name),
				 errdetail("A logical handler's tasks cannot wait in the database."),
				 errhint("Enable it with taskq.register_handler(..., enabled => true), or drop its tasks with taskq.block_handlers.")));
	task->id = next_task_id();
	msg = task_message(task, expires_at, &len);
	(void) LogLogicalMessage(h->target, msg, len, true);
	pfree(msg);
	return task->id;
}

/*
 * Dispatch of a row whose handler became logical after it was enqueued
 * (registered again with another kind): send it as the message its
 * enqueue would now write, in the dispatcher's transaction, so that it
 * is relayed exactly when the row is recorded completed.
 */
void
taskq_logical_execute(TaskqTask *task, TaskqHandler *h, TaskqOutcome *out)
{
	char	   *msg;
	Size		len;

	require_logical_wal(h->name);
	msg = task_message(task, NULL, &len);
	(void) LogLogicalMessage(h->target, msg, len, true);
	pfree(msg);
	out->status = "completed";
	out->result_null = true;
	out->result = (Datum) 0;
}
