"""A queue for SQLite writers that hands the write lock over promptly, across processes.

SQLite lets one writer in at a time. A writer that finds the lock taken waits in SQLite's busy
handler, which sleeps 1, 2, 5, 10, … up to 100 ms between attempts: when the holder commits, the
lock usually stays idle until a sleeper wakes up. With two ``iotrust serve`` workers that idle
time made two workers slower than one (85 vs 118 onboardings/s, docs/adr/0004).

:class:`WriterQueue` is taken before a writing transaction's ``BEGIN IMMEDIATE`` and released
after its commit or rollback: an exclusive ``flock`` on ``<database>.writer-lock`` (a file of
its own, mode 0600, next to the database; it holds no data), polled without blocking every
0.1 → 1 ms, plus a thread lock, because ``flock`` belongs to an open file description and would
not keep the threads of one process apart. A writer therefore reaches ``BEGIN IMMEDIATE`` only
when the previous one is done, and gets there within about a millisecond.

Polling alone is not fair: a process with more work re-takes the lock microseconds after
releasing it, while the others sleep between polls, so they could wait until their timeout.
So a writer first passes a gate, ``<database>.writer-gate``, holds it while it waits for the
lock and lets it go once it has the lock. The next writer is the one holding the gate: a
process cannot take the lock twice in a row while another one is waiting at the gate (two
processes strictly alternate; with more, who passes the gate next is a race, but one held
for a single transaction at a time).

Every process that opens the registry through :class:`~iotrust.adapters.sql.store.Database`
queues here (``serve`` workers, the CLI, benchmarks). A process that does not (an older
iotrust, the ``sqlite3`` shell) still meets ``BEGIN IMMEDIATE`` and the busy timeout as before;
the queue only decides the order among the processes that use it, never correctness.

This module does not know SQL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Final

from iotrust.errors import BackendError

__all__ = ["WriterQueue"]

_FIRST_POLL_S: Final = 0.0001
_MAX_POLL_S: Final = 0.001


class WriterQueue:
    """One database's writer queue in this process (thread-safe; survives ``fork``)."""

    def __init__(self, lock_path: Path, timeout_s: float) -> None:
        self._path = lock_path
        self._gate_path = lock_path.with_name(lock_path.name.removesuffix("-lock") + "-gate")
        self._timeout_s = timeout_s
        self._threads = threading.Lock()
        self._fds: tuple[int, int] | None = None  # (gate, lock)
        self._pid = os.getpid()
        self._usable = True

    @property
    def path(self) -> Path:
        """The lock file."""
        return self._path

    def _files(self) -> tuple[int, int] | None:
        """The gate's and the lock's descriptors (opened once per process; ``None``: unusable)."""
        if self._fds is None and self._usable:
            try:
                gate = _open(self._gate_path)
                try:
                    lock = _open(self._path)
                except OSError:
                    os.close(gate)
                    raise
            except OSError:  # e.g. a read-only folder: writers fall back to the busy timeout
                self._usable = False
            else:
                self._fds = (gate, lock)
        return self._fds

    def _after_fork(self) -> None:
        """A child must not share its parent's open file descriptions (nor its thread lock)."""
        self._threads = threading.Lock()
        self._fds = None  # the inherited descriptors stay open: closing them is the parent's
        self._pid = os.getpid()

    def acquire(self) -> None:
        """Wait for our turn; ``BackendError(database_busy)`` after the lock timeout."""
        if self._pid != os.getpid():
            self._after_fork()
        deadline = time.monotonic() + self._timeout_s
        if not self._threads.acquire(timeout=self._timeout_s):
            raise _busy()
        try:
            got = self._take(deadline)
        except BaseException:
            # e.g. KeyboardInterrupt after the lock was taken: whatever this thread holds
            # (gate, lock) is let go; unlocking an unheld flock is a no-op, and no other thread
            # of this process holds either while we hold the thread lock.
            try:
                if self._fds is not None:
                    for fd in self._fds:
                        with contextlib.suppress(OSError):
                            fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                self._threads.release()
            raise
        if not got:
            self._threads.release()
            raise _busy()

    def _take(self, deadline: float) -> bool:
        fds = self._files()
        if fds is None:
            return True
        gate, lock = fds
        if not _flock_until(gate, deadline):
            return False
        try:
            return _flock_until(lock, deadline)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)

    def release(self) -> None:
        """Let the next writer in (call exactly once per successful :meth:`acquire`)."""
        try:
            if self._fds is not None:
                fcntl.flock(self._fds[1], fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        """Close the lock files (the files stay: other processes may be using them)."""
        if self._fds is not None and self._pid == os.getpid():
            for fd in self._fds:
                os.close(fd)
        self._fds = None


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _flock_until(fd: int, deadline: float) -> bool:
    """Take the exclusive ``flock``, polling 0.1 → 1 ms apart; ``False`` at the deadline."""
    delay = _FIRST_POLL_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_POLL_S)


def _busy() -> BackendError:
    return BackendError("the database is busy; retry", reason="database_busy",
                        detail="waited too long for the writer queue")
