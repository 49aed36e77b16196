"""The journal study's lock: processes and threads exclude each other, and a process killed while
holding it (SIGKILL, out of memory) holds it no longer, so the others go on at once instead of
waiting out a stale lock file's grace (30 s with Optuna's own lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.tuning.journal_lock import JournalFlock

ROOT = Path(__file__).resolve().parent.parent

HOLD = """
import sys, time
from pipeline.tuning.journal_lock import JournalFlock
JournalFlock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def _acquire_in_thread(lock: JournalFlock) -> threading.Event:
    got = threading.Event()

    def take() -> None:
        lock.acquire()
        got.set()
        lock.release()

    threading.Thread(target=take, daemon=True).start()
    return got


def test_a_killed_holder_releases_the_lock_at_once(tmp_path):
    journal = str(tmp_path / "optuna.journal")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, journal], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        got = _acquire_in_thread(JournalFlock(journal))
        assert not got.wait(0.5)  # held by the other process
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        started = time.monotonic()
        assert got.wait(5)
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.wait()


def test_threads_of_one_process_exclude_each_other(tmp_path):
    lock = JournalFlock(str(tmp_path / "optuna.journal"))
    lock.acquire()
    got = _acquire_in_thread(lock)
    assert not got.wait(0.5)
    lock.release()
    assert got.wait(5)


def test_a_signal_while_the_lock_is_held_is_handled_once_it_is_released(tmp_path):
    """A handler that raises (Ctrl-C, SIGTERM) must not leave the lock held: the ending of the
    interrupted trial appends to the same journal."""
    lock = JournalFlock(str(tmp_path / "optuna.journal"))

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        lock.acquire()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler's turn would have come here
        with pytest.raises(Interrupted):
            lock.release()
        assert signal.getsignal(signal.SIGTERM) is interrupt
        assert _acquire_in_thread(lock).wait(5)  # released before the handler ran
    finally:
        signal.signal(signal.SIGTERM, previous)
