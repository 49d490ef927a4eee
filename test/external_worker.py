"""A test worker for test/t/112_external.pl: taskq_worker.Worker whose
handler writes a ledger row (task, attempt, worker, start, end) in its own
autocommit connection, sleeping a little in between.

    external_worker.py DSN NAME QUEUE LEASE_S SLEEP_MS [POLL_S]
"""
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
import psycopg  # noqa: E402
import taskq_worker  # noqa: E402

dsn, name, queue, lease, sleep_ms = sys.argv[1:6]
poll = float(sys.argv[6]) if len(sys.argv) > 6 else 5.0
local = threading.local()


def handler(task):
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = local.conn = psycopg.connect(dsn, autocommit=True)
    row = conn.execute("INSERT INTO ledger (task, attempt, worker, started)"
                       " VALUES (%s, %s, %s, clock_timestamp()) RETURNING n",
                       (task.id, task.attempt, name)).fetchone()[0]
    time.sleep(random.uniform(0, float(sleep_ms)) / 1000.0)
    conn.execute("UPDATE ledger SET ended = clock_timestamp() WHERE n = %s", (row,))


worker = taskq_worker.Worker(dsn + " application_name=" + name, queue, handler,
                             concurrency=2, lease=float(lease), poll=poll)
print("ready", flush=True)
worker.run()
print("stopped processed=%d lost=%d" % (worker.processed, worker.lost), flush=True)
