/*
 * listener.c
 *		taskq_listener: a small external worker for taskq's notify handlers.
 *
 * A task of a 'notify' handler is sent as pg_notify(channel, <task as JSON>)
 * when the dispatcher commits; the task then waits as 'dispatched' until a
 * worker calls taskq.ack() or taskq.nack() on it.  This program is such a
 * worker, and the model for real ones:
 *
 *	1. LISTEN on the channel, then sleep on the connection's socket;
 *	2. for each notification, take the task id out of the JSON message;
 *	3. do the work (here: print the task);
 *	4. taskq.ack(id, result) to complete it, or taskq.nack(id, error,
 *	   retry_in) to fail this attempt and have it retried.  Acks are sent
 *	   in batches: taskq.ack_many(ids, result) for every task handled
 *	   since the last batch, once no more messages are waiting (or
 *	   --batch of them are handled), so that one transaction and one WAL
 *	   flush serve many tasks while a single task is not held back.
 *
 * Delivery is at least once: a task not acknowledged within
 * taskq.ack_timeout is sent again, so real work must tolerate repeats.
 *
 * The message is a JSON object with at least "id", "handler", "queue",
 * "attempt", "payload" and "metadata".  libpq has no JSON parser, so a
 * tiny scanner below finds top-level keys; a real worker would use a JSON
 * library.
 *
 * Exit status: 0 after --count task messages, 1 on a connection or query error,
 * 2 on bad usage, 3 when --timeout passes first.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#define EXIT_QUERY_ERROR	1
#define EXIT_USAGE			2
#define EXIT_TIMEOUT		3

typedef enum
{
	REPLY_ACK,					/* ack every task */
	REPLY_NONE,					/* only print; the lease runs out */
	REPLY_NACK_FIRST			/* nack attempt 1, ack the others */
} ReplyMode;

typedef struct
{
	ReplyMode	reply;
	long		count;			/* messages to handle; 0 = no limit */
	long		batch;			/* most tasks acknowledged per ack_many() */
	double		timeout;		/* seconds for all of them; 0 = no limit */
	bool		quiet;			/* print only the "listening" line */
	bool		json;			/* print raw messages */
	const char *conninfo;
	const char *channel;
} Options;

static void
usage(FILE *out)
{
	fprintf(out,
			"Usage: taskq_listener [OPTION]... CONNINFO CHANNEL\n"
			"Listen for taskq notify tasks on CHANNEL and acknowledge them.\n\n"
			"  --ack           acknowledge every task (default)\n"
			"  --no-ack        only print tasks; they are redelivered after taskq.ack_timeout\n"
			"  --nack-first    nack attempt 1 of a task (it is retried), ack later attempts\n"
			"  --batch N       acknowledge at most N tasks per taskq.ack_many() call\n"
			"                  (default 100; a batch is sent as soon as no more\n"
			"                  messages are waiting)\n"
			"  --count N       exit after N messages (default: run until killed)\n"
			"  --timeout SECS  exit with status 3 if the messages have not all come\n"
			"                  within SECS seconds (default: wait forever)\n"
			"  --quiet         print only the \"listening on\" line and errors\n"
			"  --json          print each raw message instead of a summary line\n");
}

/*
 * Parse the command line into *opts; exit with a usage message if it is
 * wrong.
 */
static void
parse_options(int argc, char **argv, Options *opts)
{
	int			i;
	int			nargs = 0;
	const char *args[2] = {NULL, NULL};

	memset(opts, 0, sizeof(*opts));
	opts->reply = REPLY_ACK;
	opts->batch = 100;

	for (i = 1; i < argc; i++)
	{
		const char *arg = argv[i];
		char	   *end;

		if (strcmp(arg, "--ack") == 0)
			opts->reply = REPLY_ACK;
		else if (strcmp(arg, "--no-ack") == 0)
			opts->reply = REPLY_NONE;
		else if (strcmp(arg, "--nack-first") == 0)
			opts->reply = REPLY_NACK_FIRST;
		else if (strcmp(arg, "--quiet") == 0)
			opts->quiet = true;
		else if (strcmp(arg, "--json") == 0)
			opts->json = true;
		else if (strcmp(arg, "--help") == 0)
		{
			usage(stdout);
			exit(0);
		}
		else if (strcmp(arg, "--count") == 0 && i + 1 < argc)
		{
			errno = 0;
			opts->count = strtol(argv[++i], &end, 10);
			if (errno != 0 || *end != '\0' || end == argv[i] || opts->count < 1)
			{
				fprintf(stderr, "taskq_listener: --count wants a positive integer, not \"%s\"\n", argv[i]);
				exit(EXIT_USAGE);
			}
		}
		else if (strcmp(arg, "--batch") == 0 && i + 1 < argc)
		{
			errno = 0;
			opts->batch = strtol(argv[++i], &end, 10);
			if (errno != 0 || *end != '\0' || end == argv[i] || opts->batch < 1 || opts->batch > 100000)
			{
				fprintf(stderr, "taskq_listener: --batch wants an integer from 1 to 100000, not \"%s\"\n", argv[i]);
				exit(EXIT_USAGE);
			}
		}
		else if (strcmp(arg, "--timeout") == 0 && i + 1 < argc)
		{
			errno = 0;
			opts->timeout = strtod(argv[++i], &end);
			if (errno != 0 || *end != '\0' || end == argv[i] || opts->timeout <= 0)
			{
				fprintf(stderr, "taskq_listener: --timeout wants a positive number of seconds, not \"%s\"\n", argv[i]);
				exit(EXIT_USAGE);
			}
		}
		else if (arg[0] == '-' && arg[1] == '-')
		{
			fprintf(stderr, "taskq_listener: unknown option or missing value: %s\n", arg);
			usage(stderr);
			exit(EXIT_USAGE);
		}
		else if (nargs < 2)
			args[nargs++] = arg;
		else
		{
			usage(stderr);
			exit(EXIT_USAGE);
		}
	}
	if (nargs != 2)
	{
		usage(stderr);
		exit(EXIT_USAGE);
	}
	opts->conninfo = args[0];
	opts->channel = args[1];
}

/* ---------------------------------------------------------------------
 * Just enough JSON to read the top level of a task message.
 * ---------------------------------------------------------------------
 */

static const char *
skip_space(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/*
 * Return the end (one past the last character) of the JSON value that
 * starts at p, or NULL if it is malformed.  Strings may hold braces and
 * escaped quotes, so they are skipped as a whole.
 */
static const char *
value_end(const char *p)
{
	if (*p == '"')
	{
		for (p++; *p != '"'; p++)
		{
			if (*p == '\0')
				return NULL;
			if (*p == '\\' && *++p == '\0')
				return NULL;
		}
		return p + 1;
	}
	if (*p == '{' || *p == '[')
	{
		int			depth = 0;

		while (*p != '\0')
		{
			if (*p == '"')
			{
				if ((p = value_end(p)) == NULL)
					return NULL;
				continue;
			}
			if (*p == '{' || *p == '[')
				depth++;
			else if ((*p == '}' || *p == ']') && --depth == 0)
				return p + 1;
			p++;
		}
		return NULL;
	}
	/* a number, true, false or null */
	while (*p != '\0' && strchr(",}] \t\r\n", *p) == NULL)
		p++;
	return p;
}

/*
 * Find the value of a top-level key of a JSON object.  Returns its start
 * and sets *len, or returns NULL if the key is absent or the text is not a
 * JSON object.  Nested objects (the payload may hold its own "id") are
 * skipped, never searched.
 */
static const char *
json_field(const char *json, const char *key, size_t *len)
{
	size_t		keylen = strlen(key);
	const char *p = skip_space(json);

	if (*p != '{')
		return NULL;
	p = skip_space(p + 1);
	while (*p == '"')
	{
		const char *key_end = value_end(p);
		const char *val;
		const char *val_end;
		bool		match;

		if (key_end == NULL)
			return NULL;
		match = (size_t) (key_end - p) == keylen + 2 &&
			strncmp(p + 1, key, keylen) == 0;
		p = skip_space(key_end);
		if (*p != ':')
			return NULL;
		val = skip_space(p + 1);
		val_end = value_end(val);
		if (val_end == NULL || val_end == val)
			return NULL;
		if (match)
		{
			*len = (size_t) (val_end - val);
			return val;
		}
		p = skip_space(val_end);
		if (*p != ',')
			break;
		p = skip_space(p + 1);
	}
	return NULL;
}

/*
 * Read a top-level integer field (a JSON number, or a string of digits).
 * Returns false if it is absent or not an integer.
 */
static bool
json_int_field(const char *json, const char *key, long long *out)
{
	size_t		len;
	const char *val = json_field(json, key, &len);
	const char *digits;
	char	   *end;

	if (val == NULL)
		return false;
	digits = (*val == '"') ? val + 1 : val;
	errno = 0;
	*out = strtoll(digits, &end, 10);
	if (errno != 0 || end == digits)
		return false;
	/* the number must fill the value, up to the closing quote if quoted */
	return end == val + len - (*val == '"' ? 1 : 0);
}

/* ---------------------------------------------------------------------
 * Talking to taskq.
 * ---------------------------------------------------------------------
 */

/*
 * Run a query that returns one boolean, with text parameters.  Returns 1
 * or 0 for its value, -1 on error (already reported).
 */
static int
query_bool(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
	PGresult   *res;
	int			result;

	res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
	{
		fprintf(stderr, "taskq_listener: %s failed: %s", sql, PQerrorMessage(conn));
		PQclear(res);
		return -1;
	}
	result = (strcmp(PQgetvalue(res, 0, 0), "t") == 0);
	PQclear(res);
	return result;
}

/* What became of a message. */
typedef enum
{
	MESSAGE_HANDLED,
	MESSAGE_IGNORED,			/* not a task message */
	MESSAGE_ERROR				/* ack() or nack() failed */
} MessageOutcome;

/* Tasks handled and not yet acknowledged. */
typedef struct
{
	long long  *ids;
	long		n;
} Pending;

/*
 * Acknowledge the pending tasks with one taskq.ack_many() call, and say
 * which were acknowledged (the others were no longer awaiting it: their
 * lease ran out, or someone cancelled them).  False on error (reported).
 */
static bool
flush_acks(PGconn *conn, const Options *opts, Pending *pending)
{
	char	   *ids;
	char		result[96];
	const char *params[2];
	PGresult   *res;
	const char *acked;
	size_t		len = 3;
	long		i;

	if (pending->n == 0)
		return true;
	for (i = 0; i < pending->n; i++)
		len += 21;
	ids = malloc(len);
	if (ids == NULL)
	{
		fprintf(stderr, "taskq_listener: out of memory\n");
		return false;
	}
	len = 0;
	ids[len++] = '{';
	for (i = 0; i < pending->n; i++)
		len += sprintf(ids + len, i > 0 ? ",%lld" : "%lld", pending->ids[i]);
	strcpy(ids + len, "}");

	/* the result is stored on the tasks, for whoever looks at them later */
	snprintf(result, sizeof(result), "{\"acked_by\":\"taskq_listener\",\"pid\":%ld}",
			 (long) getpid());
	params[0] = ids;
	params[1] = result;
	res = PQexecParams(conn, "SELECT taskq.ack_many($1::bigint[], $2::jsonb)",
					   2, NULL, params, NULL, NULL, 0);
	free(ids);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
	{
		fprintf(stderr, "taskq_listener: taskq.ack_many() failed: %s", PQerrorMessage(conn));
		PQclear(res);
		return false;
	}

	/* "{3,5,8}": the ids acknowledged, in id order */
	acked = PQgetvalue(res, 0, 0);
	for (i = 0; i < pending->n && !opts->quiet; i++)
	{
		char		id_text[24];
		const char *p = acked;
		size_t		idlen;
		bool		found = false;

		idlen = (size_t) snprintf(id_text, sizeof(id_text), "%lld", pending->ids[i]);
		while ((p = strstr(p, id_text)) != NULL && !found)
		{
			found = (p[-1] == '{' || p[-1] == ',') && (p[idlen] == '}' || p[idlen] == ',');
			p += idlen;
		}
		printf(found ? "acked task %lld\n"
			   : "ack of task %lld refused: it is not awaiting an acknowledgement\n",
			   pending->ids[i]);
	}
	fflush(stdout);
	PQclear(res);
	pending->n = 0;
	return true;
}

/*
 * Handle one task message: print it, then nack it, or add it to the tasks
 * to acknowledge, as asked.
 */
static MessageOutcome
handle_message(PGconn *conn, const Options *opts, const char *message, Pending *pending)
{
	long long	id;
	long long	attempt;
	const char *payload;
	size_t		payload_len;
	char		id_text[32];
	int			ok;

	if (!json_int_field(message, "id", &id))
	{
		/* not a task: say so, but keep serving the others */
		fprintf(stderr, "taskq_listener: ignoring a message without a task id: %s\n", message);
		return MESSAGE_IGNORED;
	}
	if (!json_int_field(message, "attempt", &attempt))
		attempt = 0;
	payload = json_field(message, "payload", &payload_len);
	if (payload == NULL)
	{
		payload = "null";
		payload_len = strlen(payload);
	}

	if (opts->json && !opts->quiet)
		printf("%s\n", message);
	else if (!opts->quiet)
		printf("received task %lld attempt %lld payload %.*s\n",
			   id, attempt, (int) payload_len, payload);
	fflush(stdout);

	/* Here a real worker does the work, before it acknowledges. */

	snprintf(id_text, sizeof(id_text), "%lld", id);
	if (opts->reply == REPLY_NONE)
		return MESSAGE_HANDLED;
	if (opts->reply == REPLY_NACK_FIRST && attempt == 1)
	{
		const char *params[3] = {id_text, "listener asked for a retry", "0 seconds"};

		ok = query_bool(conn, "SELECT taskq.nack($1::bigint, $2, $3::interval)", 3, params);
		if (ok >= 0 && !opts->quiet)
			printf(ok ? "nacked task %lld: it will be retried\n"
				   : "nack of task %lld refused: it is not awaiting an acknowledgement\n", id);
	}
	else
	{
		pending->ids[pending->n++] = id;
		if (pending->n >= opts->batch && !flush_acks(conn, opts, pending))
			return MESSAGE_ERROR;
		return MESSAGE_HANDLED;
	}
	fflush(stdout);
	return ok >= 0 ? MESSAGE_HANDLED : MESSAGE_ERROR;
}

/*
 * The next notification libpq has read; with acks pending, first read
 * what the server has already sent (without waiting), so that a burst is
 * acknowledged together.
 */
static PGnotify *
next_notify(PGconn *conn, const Pending *pending)
{
	PGnotify   *notify = PQnotifies(conn);

	if (notify == NULL && pending->n > 0 && PQconsumeInput(conn))
		notify = PQnotifies(conn);
	return notify;
}

/* Seconds on a clock that does not jump. */
static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	Options		opts;
	const char *keywords[] = {"dbname", "fallback_application_name", NULL};
	const char *values[] = {NULL, "taskq_listener", NULL};
	PGconn	   *conn;
	PGresult   *res;
	char	   *channel;
	char	   *sql;
	long		received = 0;
	double		deadline;
	int			status = 0;
	Pending		pending = {NULL, 0};

	parse_options(argc, argv, &opts);
	pending.ids = malloc(sizeof(long long) * opts.batch);
	if (pending.ids == NULL)
	{
		fprintf(stderr, "taskq_listener: out of memory\n");
		return EXIT_QUERY_ERROR;
	}
	deadline = now_seconds() + opts.timeout;

	/* dbname with expand_dbname takes a full conninfo string or URI */
	values[0] = opts.conninfo;
	conn = PQconnectdbParams(keywords, values, 1);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "taskq_listener: could not connect: %s", PQerrorMessage(conn));
		PQfinish(conn);
		return EXIT_QUERY_ERROR;
	}

	/* A channel is an identifier: quote it, it may hold anything. */
	channel = PQescapeIdentifier(conn, opts.channel, strlen(opts.channel));
	if (channel == NULL)
	{
		fprintf(stderr, "taskq_listener: bad channel name: %s", PQerrorMessage(conn));
		PQfinish(conn);
		return EXIT_USAGE;
	}
	sql = malloc(strlen(channel) + sizeof("LISTEN "));
	if (sql == NULL)
	{
		fprintf(stderr, "taskq_listener: out of memory\n");
		PQfreemem(channel);
		PQfinish(conn);
		return EXIT_QUERY_ERROR;
	}
	sprintf(sql, "LISTEN %s", channel);
	res = PQexec(conn, sql);
	free(sql);
	PQfreemem(channel);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "taskq_listener: LISTEN failed: %s", PQerrorMessage(conn));
		PQclear(res);
		PQfinish(conn);
		return EXIT_QUERY_ERROR;
	}
	PQclear(res);

	/* Callers wait for this line before they enqueue. */
	printf("listening on %s\n", opts.channel);
	fflush(stdout);

	while (opts.count == 0 || received < opts.count)
	{
		PGnotify   *notify;
		struct pollfd pfd;
		int			timeout_ms = -1;
		int			rc;

		/*
		 * Handle what libpq has already read, including notifications that
		 * came in while we were running ack() or nack().
		 */
		while ((opts.count == 0 || received < opts.count) &&
			   (notify = next_notify(conn, &pending)) != NULL)
		{
			MessageOutcome outcome = handle_message(conn, &opts, notify->extra, &pending);

			PQfreemem(notify);
			if (outcome == MESSAGE_ERROR)
			{
				status = EXIT_QUERY_ERROR;
				goto done;
			}
			if (outcome == MESSAGE_HANDLED)
				received++;
		}
		if (pending.n > 0)
		{
			if (!flush_acks(conn, &opts, &pending))
			{
				status = EXIT_QUERY_ERROR;
				goto done;
			}
			/* libpq may have read more messages during the call */
			continue;
		}
		if (opts.count != 0 && received >= opts.count)
			break;

		/* Sleep until the server sends something, or the deadline. */
		if (opts.timeout > 0)
		{
			double		left = deadline - now_seconds();

			if (left <= 0)
			{
				if (opts.count > 0)
					fprintf(stderr, "taskq_listener: timed out after %g s, with %ld of %ld tasks received\n",
							opts.timeout, received, opts.count);
				else
					fprintf(stderr, "taskq_listener: timed out after %g s, with %ld tasks received\n",
							opts.timeout, received);
				status = EXIT_TIMEOUT;
				goto done;
			}
			timeout_ms = (int) (left * 1000.0) + 1;
		}
		pfd.fd = PQsocket(conn);
		pfd.events = POLLIN;
		pfd.revents = 0;
		rc = poll(&pfd, 1, timeout_ms);
		if (rc < 0 && errno != EINTR)
		{
			perror("taskq_listener: poll");
			status = EXIT_QUERY_ERROR;
			goto done;
		}
		if (rc > 0 && !PQconsumeInput(conn))
		{
			fprintf(stderr, "taskq_listener: connection lost: %s", PQerrorMessage(conn));
			status = EXIT_QUERY_ERROR;
			goto done;
		}
	}

done:
	free(pending.ids);
	PQfinish(conn);
	return status;
}
