"""The external worker of test/bench/run: taskq_worker.Worker (the Python
client library, unchanged) with a handler that does nothing, or that
records how long ago the enqueuing statement read the clock.

    ext_worker.py DSN QUEUE CONCURRENCY BATCH drain
    ext_worker.py DSN QUEUE CONCURRENCY BATCH latency OUTFILE

It runs until SIGTERM (the bench knows it is ready when its listening
session has run LISTEN), then prints "stopped processed=N lost=N".  In latency mode each task's payload
carries t (epoch seconds read by clock_timestamp() in the enqueuing
statement); the pickup delays, in milliseconds, go to OUTFILE at the end.
"""
import os
import sys
import threading
import time

# the library: clients/python in the clone, or beside this file (the bench
# copies both where the server's OS user can read them)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
import taskq_worker  # noqa: E402

dsn, queue, concurrency, batch, mode = sys.argv[1:6]
delays = []
lock = threading.Lock()


def noop(task):
    return None


def latency(task):
    ms = (time.time() - float(task.payload["t"])) * 1000.0
    with lock:
        delays.append(ms)


worker = taskq_worker.Worker(dsn, queue, noop if mode == "drain" else latency,
                             concurrency=int(concurrency), batch_size=int(batch),
                             lease=60.0, poll=5.0)
worker.run()
if mode == "latency":
    with open(sys.argv[6], "w") as out:
        out.write("".join("%.3f\n" % d for d in delays))
print("stopped processed=%d lost=%d" % (worker.processed, worker.lost), flush=True)
