"""Tests of taskq_worker against a live server (test/run clients).

TASKQ_CONNINFO names a database with taskq installed, dispatchers running
(taskq.enabled = on) and the connecting role a superuser.  Each test uses
its own queue and handler names.  Waiting is polling for a state, with a
generous deadline.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import unittest

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taskq_worker  # noqa: E402

DSN = os.environ.get("TASKQ_CONNINFO", "dbname=postgres")


def sql(query, params=None):
    with psycopg.connect(DSN, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else None


def poll(cond, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in %s s" % seconds)


def statuses(handler):
    return dict(sql("SELECT status::text, count(*) FROM taskq.tasks WHERE handler = %s"
                    " GROUP BY status", (handler,)))


class Background:
    # A Worker running in a thread, stopped at exit.

    def __init__(self, worker):
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.worker

    def __exit__(self, *exc):
        self.worker.stop()
        self.thread.join(30)


class WorkerTest(unittest.TestCase):
    def register(self, name, queue, **opts):
        extra = "".join(", %s => %s" % (k, v) for k, v in opts.items())
        sql("SELECT taskq.register_handler(%%s, NULL, kind => 'external', queue => %%s%s)" % extra,
            (name, queue))

    def test_claim_run_ack(self):
        # Tasks run once each, in the pool, and complete.
        self.register("py_basic", "py_basic_q")
        seen = []
        with Background(taskq_worker.Worker(DSN, "py_basic_q", lambda t: seen.append(t.payload["n"]),
                                            concurrency=4, batch_size=5)):
            sql("SELECT taskq.enqueue_many('py_basic', ARRAY(SELECT jsonb_build_object('n', i)"
                " FROM generate_series(1, 20) i))")
            poll(lambda: statuses("py_basic").get("completed") == 20)
        self.assertEqual(sorted(seen), list(range(1, 21)))

    def test_outcomes_acked_together_and_promptly(self):
        # Outcomes wait at most ACK_DELAY to share an ack_many, and a
        # claim waits for half a batch of room; neither waits for the poll
        # (30 s here) or the next heartbeat (20 s): 30 tasks of 50 ms, one
        # thread, batches of 10, done in about 2 s.
        self.register("py_ack", "py_ack_q")
        worker = taskq_worker.Worker(DSN, "py_ack_q", lambda t: time.sleep(0.05), concurrency=1,
                                     batch_size=10, lease=60.0, poll=30.0)
        with Background(worker):
            sql("SELECT taskq.enqueue_many('py_ack', ARRAY(SELECT jsonb_build_object('n', i)"
                " FROM generate_series(1, 30) i))")
            poll(lambda: statuses("py_ack").get("completed") == 30, seconds=10.0)
        self.assertEqual(worker.processed, 30)

    def test_result_and_exception(self):
        # A result is stored; an exception nacks with its text.
        self.register("py_fail", "py_fail_q", max_attempts=1)

        def handler(task):
            if task.payload["ok"]:
                return {"echo": task.payload["ok"]}
            raise ValueError("boom")

        with Background(taskq_worker.Worker(DSN, "py_fail_q", handler)):
            sql("SELECT taskq.enqueue('py_fail', '{\"ok\": 7}')")
            sql("SELECT taskq.enqueue('py_fail', '{\"ok\": 0}')")
            poll(lambda: sum(statuses("py_fail").values()) == 2
                 and "dispatched" not in statuses("py_fail") and "queued" not in statuses("py_fail"))
        rows = sql("SELECT status::text, result, last_error FROM taskq.tasks WHERE handler = 'py_fail'"
                   " ORDER BY id")
        self.assertEqual(rows, [("completed", {"echo": 7}, None), ("failed", None, "ValueError: boom")])

    def test_retry_delay(self):
        # Retry(retry_in=...) nacks with that delay: the task runs again.
        self.register("py_retry", "py_retry_q", max_attempts=3)
        attempts = []

        def handler(task):
            attempts.append(task.attempt)
            if task.attempt < 2:
                raise taskq_worker.Retry("later", retry_in=0.1)

        with Background(taskq_worker.Worker(DSN, "py_retry_q", handler, poll=0.2)):
            sql("SELECT taskq.enqueue('py_retry')")
            poll(lambda: statuses("py_retry").get("completed") == 1)
        self.assertEqual(attempts, [1, 2])

    def test_heartbeat_keeps_lease(self):
        # A task that outlives its lease keeps it through heartbeats.
        self.register("py_beat", "py_beat_q")
        with Background(taskq_worker.Worker(DSN, "py_beat_q", lambda t: time.sleep(2.5), lease=1.0)):
            sql("SELECT taskq.enqueue('py_beat')")
            poll(lambda: statuses("py_beat").get("completed") == 1)
        self.assertEqual(sql("SELECT attempts FROM taskq.tasks WHERE handler = 'py_beat'"), [(1,)])

    def test_idle_holds_nothing(self):
        # An idle worker's sessions are idle, with no transaction or xmin.
        self.register("py_idle", "py_idle_q")
        with Background(taskq_worker.Worker(DSN, "py_idle_q", lambda t: None)) as w:
            sql("SELECT taskq.enqueue('py_idle')")
            poll(lambda: statuses("py_idle").get("completed") == 1)
            rows = poll(lambda: sql(
                "SELECT state, backend_xmin IS NULL, xact_start IS NULL FROM pg_stat_activity"
                " WHERE application_name = '' AND backend_type = 'client backend'"
                " AND pid <> pg_backend_pid() AND query ~ '(LISTEN|taskq\\.)'"))
            self.assertTrue(w.processed == 1)
        for state, no_xmin, no_xact in rows:
            self.assertEqual((state, no_xmin, no_xact), ("idle", True, True))

    def test_wake_channel_pickup(self):
        # An idle worker claims a new task through the wake channel, not by polling.
        self.register("py_wake", "py_wake_q")
        started = {}
        with Background(taskq_worker.Worker(DSN, "py_wake_q", lambda t: started.setdefault(t.id, time.monotonic()),
                                            poll=60.0)):
            # idle: listening, and its claim came back empty
            poll(lambda: sql("SELECT 1 FROM pg_stat_activity WHERE state = 'idle'"
                             " AND query LIKE '%%FROM taskq.claim(%%'"))
            t0 = time.monotonic()
            task_id = sql("SELECT taskq.enqueue('py_wake')")[0][0]
            poll(lambda: task_id in started, seconds=10)
        self.assertLess(started[task_id] - t0, 5.0)

    def test_sigterm_finishes_in_flight(self):
        # SIGTERM: the running task finishes and is acked, then the worker exits 0.
        self.register("py_term", "py_term_q")
        code = ("import sys, time; sys.path.insert(0, %r); import taskq_worker;"
                "taskq_worker.Worker(%r, 'py_term_q', lambda t: time.sleep(1.5)).run()"
                % (os.path.dirname(os.path.abspath(__file__)), DSN))
        proc = subprocess.Popen([sys.executable, "-c", code])
        try:
            sql("SELECT taskq.enqueue('py_term')")
            poll(lambda: statuses("py_term").get("dispatched") == 1)
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(30), 0)
        finally:
            proc.kill()
        self.assertEqual(statuses("py_term"), {"completed": 1})

    def test_listen_notify(self):
        # The notify kind's loop runs a task and acks it with the result.
        sql("SELECT taskq.register_handler('py_notify', 'py_notify_chan', kind => 'notify')")
        stop = threading.Event()
        thread = threading.Thread(target=taskq_worker.listen_notify,
                                  args=(DSN, "py_notify_chan", lambda t: {"got": t["payload"]["x"]}, stop),
                                  kwargs={"poll": 0.1}, daemon=True)
        thread.start()
        try:
            # LISTEN first: a notification sent before it is not kept
            poll(lambda: sql("SELECT 1 FROM pg_stat_activity WHERE query = 'LISTEN \"py_notify_chan\"'"))
            sql("SELECT taskq.enqueue('py_notify', '{\"x\": 3}')")
            poll(lambda: statuses("py_notify").get("completed") == 1)
        finally:
            stop.set()
            thread.join(10)
        self.assertEqual(sql("SELECT result FROM taskq.tasks WHERE handler = 'py_notify'"), [({"got": 3},)])


if __name__ == "__main__":
    unittest.main(verbosity=2)
