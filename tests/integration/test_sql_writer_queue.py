"""The SQLite writer queue: writers of several processes take turns through one lock file."""

from __future__ import annotations

import fcntl
import itertools
import multiprocessing
import os
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from iotrust.adapters.sql import Database
from iotrust.core.records import EventHead, EventRow
from iotrust.errors import BackendError

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _chained(kind: str) -> Callable[[EventHead | None], EventRow]:
    def make(head: EventHead | None) -> EventRow:
        seq = head.seq + 1 if head is not None else 1
        prev = head.hash if head is not None else ""
        return EventRow(seq=seq, at=T0, kind=kind, actor="test", device_id=None, reason=None,
                        data="{}", prev_hash=prev, hash=f"h{seq}")
    return make


def _lock_path(db_file: Path) -> Path:
    return db_file.with_name(db_file.name + ".writer-lock")


def _try_flock(path: Path) -> bool:
    """Whether another open file description gets the lock right now (released at once)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _writer(url: str, kind: str, count: int) -> None:
    db = Database.open(url, create=False)
    try:
        for _ in range(count):
            with db.transaction() as tx:
                tx.append_event(_chained(kind))
    finally:
        db.close()


def test_two_processes_and_their_threads_write_concurrently(tmp_path: Path) -> None:
    db_file = tmp_path / "registry.db"
    url = f"sqlite:///{db_file}"
    Database.open(url).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, f"p{n}", 40)) for n in range(2)]
    for p in procs:
        p.start()
    db = Database.open(url, create=False)
    try:
        threads = [threading.Thread(target=_writer, args=(url, f"t{n}", 20)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        with db.transaction(readonly=True) as tx:
            events = list(tx.iter_events())
        assert [e.seq for e in events] == list(range(1, 121))
        assert {e.kind for e in events} == {"p0", "p1", "t0", "t1"}
    finally:
        db.close()
    for path in (_lock_path(db_file), db_file.with_name(db_file.name + ".writer-gate")):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def _eager_writer(url: str, kind: str, count: int, start: Any) -> None:
    db = Database.open(url, create=False)
    try:
        start.wait()
        for _ in range(count):  # always ready to write again: the queue must still take turns
            with db.transaction() as tx:
                tx.append_event(_chained(kind))
    finally:
        db.close()


def test_two_eager_processes_take_turns(tmp_path: Path) -> None:
    """Whoever waits at the gate writes next: a process cannot keep the lock to itself."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    Database.open(url).close()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)  # both opened the database: go
    procs = [ctx.Process(target=_eager_writer, args=(url, f"p{n}", 40, start)) for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    db = Database.open(url, create=False)
    try:
        with db.transaction(readonly=True) as tx:
            kinds = [e.kind for e in tx.iter_events()]
    finally:
        db.close()
    assert sorted(kinds) == ["p0"] * 40 + ["p1"] * 40
    turns = sum(1 for a, b in itertools.pairwise(kinds) if a != b)
    assert turns >= 40  # strict alternation once both run (79); without the gate: long runs


def test_the_lock_is_released_after_commit_and_after_exceptions(tmp_path: Path) -> None:
    db_file = tmp_path / "registry.db"
    db = Database.open(f"sqlite:///{db_file}")
    lock = _lock_path(db_file)
    try:
        with db.transaction() as tx:
            tx.append_event(_chained("one"))
            assert not _try_flock(lock)  # held while the transaction is open
        assert _try_flock(lock)
        def fail_after_writing() -> None:
            with db.transaction() as tx:
                tx.append_event(_chained("undone"))
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            fail_after_writing()
        assert _try_flock(lock)
        with pytest.raises(RuntimeError), db.transaction() as tx:
            tx.append_event(lambda _head: EventRow(  # does not extend the head: refused
                seq=99, at=T0, kind="bad", actor="test", device_id=None, reason=None,
                data="{}", prev_hash="", hash="x"))
        assert _try_flock(lock)
        done = threading.Event()

        def other_thread() -> None:  # the thread lock was released too
            with db.transaction() as tx:
                tx.append_event(_chained("two"))
            done.set()

        t = threading.Thread(target=other_thread)
        t.start()
        t.join(timeout=30)
        assert done.is_set()
        with db.transaction(readonly=True) as tx:
            assert [e.kind for e in tx.iter_events()] == ["one", "two"]
    finally:
        db.close()


def test_waiting_too_long_is_database_busy_and_readers_never_queue(tmp_path: Path) -> None:
    db_file = tmp_path / "registry.db"
    Database.open(f"sqlite:///{db_file}").close()
    db = Database.open(f"sqlite:///{db_file}", create=False, lock_timeout_s=0.2)
    fd = os.open(_lock_path(db_file), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another "process" is writing
        with pytest.raises(BackendError) as info, db.transaction() as tx:
            tx.append_event(_chained("blocked"))
        assert info.value.reason == "database_busy"
        with db.transaction(readonly=True) as tx:  # readers do not wait
            assert tx.count_events() == 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        with db.transaction() as tx:  # our turn now; nothing stayed held by the failure
            tx.append_event(_chained("later"))
    finally:
        os.close(fd)
        db.close()


def test_memory_databases_have_no_queue(tmp_path: Path) -> None:
    db = Database.open("sqlite://")
    try:
        with db.transaction() as tx:
            tx.append_event(_chained("x"))
    finally:
        db.close()
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_while_taking_the_lock_leaves_nothing_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A KeyboardInterrupt (any BaseException) that lands after the writer lock was taken but
    # before acquire() returned (here: while the gate is let go) must not keep the lock.
    from iotrust.adapters.sql import writerlock  # noqa: PLC0415

    db_file = tmp_path / "registry.db"
    db = Database.open(f"sqlite:///{db_file}")
    real_flock = fcntl.flock
    interrupted: list[int] = []

    def flock(fd: int, op: int) -> None:
        real_flock(fd, op)
        if op == fcntl.LOCK_UN and not interrupted:  # the gate, right after the lock was taken
            interrupted.append(fd)
            raise KeyboardInterrupt

    try:
        monkeypatch.setattr(writerlock.fcntl, "flock", flock)
        with pytest.raises(KeyboardInterrupt), db.transaction() as tx:
            tx.append_event(_chained("never"))
        monkeypatch.undo()
        assert interrupted
        assert _try_flock(_lock_path(db_file))  # another process could write now
        with db.transaction() as tx:  # and so can this one (the thread lock is free too)
            tx.append_event(_chained("later"))
    finally:
        monkeypatch.undo()
        db.close()


def _forked_writer(db: Database, released: Any, result: Any) -> None:
    """In a forked child: wait for the writer queue the parent holds; say if it was let go."""
    queue = db._writers  # the queue alone: the parent's pooled connections are not ours
    assert queue is not None
    try:
        queue.acquire()
    except BackendError:
        result.put("busy")
        return
    result.put("after release" if released.is_set() else "while held")
    queue.release()


def test_a_forked_child_queues_behind_its_parent(tmp_path: Path) -> None:
    # The child inherits the parent's lock-file descriptors (one open file description, so one
    # flock) and its thread lock, possibly held: it must open its own and wait its turn.
    db = Database.open(f"sqlite:///{tmp_path / 'registry.db'}", lock_timeout_s=30)
    ctx = multiprocessing.get_context("fork")
    released, result = ctx.Event(), ctx.Queue()
    try:
        with db.transaction() as tx:
            tx.append_event(_chained("parent"))
            child = ctx.Process(target=_forked_writer, args=(db, released, result))
            child.start()
            time.sleep(0.3)  # the child is waiting now (or wrongly got in)
            released.set()  # set just before the commit lets go (the order the child checks)
        assert result.get(timeout=30) == "after release"
        child.join(timeout=30)
        assert child.exitcode == 0
    finally:
        db.close()
