"""The lock around appends to a journal-file study, held with flock(2): the kernel releases it
when its holder dies. Optuna's own lock is a lock file that a process killed while appending
(SIGKILL, out of memory) leaves behind, and every other process of the study then waits out a
30-second grace before breaking it: a tuning worker whose pipeline was killed could not even
record its trial's failure for that long. A journal file is shared by the processes of one
machine; a study shared between machines lives in a database (tune.storage=postgresql://...)."""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import ExitStack

from pipeline.shutdown import interrupts_held


class JournalFlock:
    """`path` + ".flock" locked for each append (each thread opens it on its own, so threads
    exclude each other as processes do). Optuna's `JournalFileBackend` takes it as `lock_obj`:
    it calls only `acquire()` and `release()`.

    Ctrl-C and SIGTERM are held from the moment the lock is taken until it is released: their
    handlers raise, and one raised between the two (in `release` before the close, or in Optuna
    between its call to `acquire` and its `try`) would leave the lock held by this process for
    good, so that its own ending, which records the trial's failure, waited on it forever."""

    def __init__(self, path: str):
        self._path = f"{path}.flock"
        self._held = threading.local()

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o644)
        signals = ExitStack()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a signal's handler may raise here: nothing is held
            signals.enter_context(interrupts_held())
        except BaseException:
            os.close(fd)
            raise
        self._held.fd, self._held.signals = fd, signals
        return True

    def release(self) -> None:
        fd = getattr(self._held, "fd", None)
        if fd is None:
            raise RuntimeError(f"{self._path} is not locked by this thread")
        self._held.fd = None
        try:
            os.close(fd)  # closing the only descriptor of the lock releases it
        finally:
            self._held.signals.close()  # a signal held meanwhile is handled now
