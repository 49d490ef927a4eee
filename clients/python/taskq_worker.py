"""taskq_worker: run taskq tasks outside the database, on psycopg 3.

Two loops, one per way taskq hands work out:

* ``Worker`` pulls the tasks of ``external`` handlers: ``taskq.claim()``
  with a lease, heartbeats while they run, ``ack_many``/``ack`` on success,
  ``nack`` with the exception's text on failure, and, while idle, waits on
  ``LISTEN taskq.wake_channel(queue)`` with no transaction open.
* ``listen_notify`` receives the tasks of ``notify`` handlers
  (``LISTEN channel``), runs them and acknowledges them.

Both connect in autocommit mode: every statement is its own short
transaction, so an idle worker holds no snapshot, lock or xmin.
"""

import datetime
import json
import os
import queue as queue_mod
import select
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

__all__ = ["Task", "Retry", "Worker", "listen_notify"]

# How long a finished task's outcome may wait for others to share its
# ack_many (seconds).  A worker acked and claimed again after every task
# that finished, so a fast handler cost two round trips per task.
ACK_DELAY = 0.005


@dataclass
class Task:
    """A claimed task, as taskq.claim() returns it."""

    id: int
    handler: str
    queue: str
    payload: Any
    metadata: Any
    attempt: int
    lease_until: Optional[datetime.datetime]


class Retry(Exception):
    """Raise from a handler to nack with a chosen delay (seconds)."""

    def __init__(self, message: str, retry_in: float = 0.0):
        super().__init__(message)
        self.retry_in = retry_in


def _error_text(exc: BaseException) -> str:
    """What a nack stores as last_error: the exception's type and text."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_in(exc: BaseException) -> Optional[datetime.timedelta]:
    """A Retry's delay, or None for taskq's backoff."""
    if isinstance(exc, Retry):
        return datetime.timedelta(seconds=exc.retry_in)
    return None


class Worker:
    """Pull the tasks of external handlers from one queue and run them.

    handler_fn(task) runs in a thread pool of ``concurrency`` threads; what
    it returns (JSON-able, or None) is stored as the task's result, an
    exception nacks the attempt with its text (``Retry`` sets the delay).
    Up to ``batch_size`` tasks are claimed per call (default:
    ``concurrency``); at most max(concurrency, batch_size) are held at once.
    Once held tasks run, more are claimed when half a batch has room (or
    none are held), and outcomes are acknowledged together, at most
    ``ACK_DELAY`` seconds after the first of them (at once when nothing
    else is held or half a batch is done).
    Leases last ``lease`` seconds and are renewed every lease/3 while
    tasks are held.  ``run()`` returns after ``stop()`` or SIGTERM/SIGINT:
    no new claims, in-flight tasks get ``shutdown_timeout`` seconds
    (default: the lease) to finish, the rest are nacked.
    """

    def __init__(self, dsn: str, queue: str, handler_fn: Callable[[Task], Any],
                 concurrency: int = 1, lease: float = 30.0, batch_size: Optional[int] = None,
                 handler: Optional[str] = None, session_lease: bool = False,
                 poll: float = 5.0, shutdown_timeout: Optional[float] = None):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease <= 0:
            raise ValueError("lease must be positive")
        self.dsn = dsn
        self.queue = queue
        self.handler_fn = handler_fn
        self.concurrency = concurrency
        self.lease = datetime.timedelta(seconds=lease)
        self.batch_size = batch_size or concurrency
        self.capacity = max(concurrency, self.batch_size)
        self.handler = handler
        self.session_lease = session_lease
        self.poll = poll
        self.shutdown_timeout = lease if shutdown_timeout is None else shutdown_timeout
        self.processed = 0
        self.failed = 0
        self.lost = 0              # tasks whose lease was gone at ack/heartbeat
        self._stopping = threading.Event()
        self._done: "queue_mod.Queue[tuple]" = queue_mod.Queue()
        self._done_since: Optional[float] = None   # oldest outcome not yet acked
        self._inflight: dict = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- control -------------------------------------------------------

    def stop(self) -> None:
        """Ask run() to finish: safe from signal handlers and threads."""
        self._stopping.set()
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass                    # the pipe is full: run() wakes anyway

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, lambda *_: self.stop())
        return old

    # -- the loop ------------------------------------------------------

    def run(self) -> None:
        """Claim, run and finish tasks until stop(); see the class doc."""
        old = self._install_signals()
        try:
            with psycopg.connect(self.dsn, autocommit=True) as listen, \
                    psycopg.connect(self.dsn, autocommit=True) as conn, \
                    ThreadPoolExecutor(self.concurrency) as pool:
                self._loop(listen, conn, pool)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _loop(self, listen, conn, pool) -> None:
        channel = conn.execute("SELECT taskq.wake_channel(%s)", (self.queue,)).fetchone()[0]
        # before the first claim: a task enqueued after it is notified
        listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        next_beat = time.monotonic() + self.lease.total_seconds() / 3
        deadline = None
        while True:
            if self._ack_due():
                self._finish(conn)
            if self._stopping.is_set():
                if deadline is None:
                    deadline = time.monotonic() + self.shutdown_timeout
                self._finish(conn)
                if not self._inflight:
                    return
                if time.monotonic() >= deadline:
                    self._abandon(conn)
                    return
            if self._inflight and time.monotonic() >= next_beat:
                self._heartbeat(conn)
                next_beat = time.monotonic() + self.lease.total_seconds() / 3
            free = self.capacity - len(self._inflight)
            if self._claim_due(free):
                if self._claim(conn, pool, min(free, self.batch_size)):
                    continue
            timeout = self.poll
            if self._inflight:
                timeout = min(timeout, max(0.0, next_beat - time.monotonic()))
            # _done_since may be left set by a race with _finish: only
            # outcomes still waiting bound the wait
            if self._done_since is not None and not self._done.empty():
                timeout = min(timeout, max(0.0, self._done_since + ACK_DELAY - time.monotonic()))
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
            self._wait(listen, timeout)

    def _ack_due(self) -> bool:
        """Whether the outcomes waiting should be acknowledged now."""
        done = self._done.qsize()
        if done == 0:
            return False
        return (done >= len(self._inflight) or done >= max(1, self.batch_size // 2)
                or self._done_since is None
                or time.monotonic() >= self._done_since + ACK_DELAY)

    def _claim_due(self, free: int) -> bool:
        """Whether to claim now: room for half a batch, or nothing held."""
        if free <= 0 or self._stopping.is_set():
            return False
        return not self._inflight or free >= max(1, self.batch_size // 2)

    def _wait(self, listen, timeout: float) -> None:
        """Sleep until a notification, a finished task, stop(), or timeout."""
        if self._ack_due():
            return
        try:
            ready, _, _ = select.select([listen.fileno(), self._wake_r], [], [], timeout)
        except InterruptedError:
            return
        if listen.fileno() in ready:
            listen.pgconn.consume_input()
            while listen.pgconn.notifies() is not None:
                pass                # one claim serves them all
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _claim(self, conn, pool, n: int) -> int:
        rows = conn.execute(
            "SELECT id, handler, queue, payload, metadata, attempt, lease_until"
            " FROM taskq.claim(%s, %s, %s, %s, %s)",
            (self.queue, n, self.lease, self.handler, self.session_lease)).fetchall()
        for row in rows:
            task = Task(*row)
            self._inflight[task.id] = task
            pool.submit(self._run_one, task)
        return len(rows)

    def _run_one(self, task: Task) -> None:
        """In a pool thread: run the handler, hand the outcome to run()."""
        try:
            result = self.handler_fn(task)
            outcome = (task, True, result, None)
        except BaseException as exc:   # noqa: BLE001 - every failure nacks
            outcome = (task, False, _error_text(exc), _retry_in(exc))
        first = self._done_since is None
        if first:
            self._done_since = time.monotonic()
        self._done.put(outcome)
        # run() sleeps until the first outcome's ACK_DELAY, or until the
        # ack is due: waking it for every task cost a thread switch each
        if first or self._ack_due():
            self._poke()

    def _finish(self, conn) -> None:
        """Ack the successes (ack_many for those without a result), nack the rest."""
        plain, outcomes = [], []
        self._done_since = None
        while True:
            try:
                outcomes.append(self._done.get_nowait())
            except queue_mod.Empty:
                break
        for task, ok, value, retry_in in outcomes:
            task_id = task.id
            if self._inflight.get(task_id) is not task:
                # abandoned at shutdown, or its lease was lost (and the task
                # may be held again as a new attempt, whose outcome this
                # is not)
                continue
            del self._inflight[task_id]
            if ok and value is None:
                plain.append(task_id)
            elif ok:
                acked = conn.execute("SELECT taskq.ack(%s, %s)", (task_id, Jsonb(value))).fetchone()[0]
                self._count(acked, ok)
            else:
                nacked = conn.execute("SELECT taskq.nack(%s, %s, %s)",
                                      (task_id, value, retry_in)).fetchone()[0]
                self._count(nacked, ok)
        if plain:
            acked = conn.execute("SELECT taskq.ack_many(%s)", (plain,)).fetchone()[0]
            self.processed += len(acked)
            self.lost += len(plain) - len(acked)

    def _count(self, done: bool, ok: bool) -> None:
        if not done:
            self.lost += 1
        elif ok:
            self.processed += 1
        else:
            self.failed += 1

    def _heartbeat(self, conn) -> None:
        ids = list(self._inflight)
        held = {r[0] for r in conn.execute("SELECT taskq.heartbeat(%s, %s)", (ids, self.lease))}
        for task_id in ids:
            if task_id not in held:
                # the lease is gone: its ack would be refused; forget it
                del self._inflight[task_id]
                self.lost += 1

    def _abandon(self, conn) -> None:
        for task_id in list(self._inflight):
            conn.execute("SELECT taskq.nack(%s, %s, %s)",
                         (task_id, "the worker shut down before the task finished",
                          datetime.timedelta(0)))
            del self._inflight[task_id]


def listen_notify(dsn: str, channel: str, handler_fn: Callable[[dict], Any],
                  stop: Optional[threading.Event] = None, poll: float = 1.0) -> None:
    """Run the tasks of a notify handler: LISTEN, run, ack or nack.

    handler_fn(task) gets the task as taskq sends it (a dict with id,
    handler, queue, attempt, priority, ack, payload, metadata).  Its result
    is stored with ack(); an exception nacks with its text.  Tasks sent
    with ack => false are run and not acknowledged.  Returns when stop is
    set (checked every poll seconds).
    """
    stop = stop or threading.Event()
    with psycopg.connect(dsn, autocommit=True) as listen, \
            psycopg.connect(dsn, autocommit=True) as conn:
        listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        while not stop.is_set():
            ready, _, _ = select.select([listen.fileno()], [], [], poll)
            if not ready:
                continue
            listen.pgconn.consume_input()
            while (n := listen.pgconn.notifies()) is not None:
                task = json.loads(n.extra.decode())
                try:
                    result = handler_fn(task)
                    if task.get("ack", True):
                        conn.execute("SELECT taskq.ack(%s, %s)",
                                     (task["id"], None if result is None else Jsonb(result)))
                except Exception as exc:   # noqa: BLE001 - every failure nacks
                    if task.get("ack", True):
                        conn.execute("SELECT taskq.nack(%s, %s, %s)",
                                     (task["id"], _error_text(exc), _retry_in(exc)))
