"""The journal study's lock: processes and threads exclude each other, and a process killed while
holding it (SIGKILL, out of memory) holds it no longer, so the others go on at once instead of
waiting out a stale lock file's grace (30 s with Optuna's own lock)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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
