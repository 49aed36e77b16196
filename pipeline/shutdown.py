"""Ending a command's process without the interpreter's teardown of every loaded module.

With torch, MLflow and scikit-learn loaded, that teardown takes seconds after the work is done
(2 s here for the pipeline, and as much again for each tuning worker the command waits for),
and it writes nothing: files, runs and studies are closed by then. So a command flushes what
teardown would have flushed (its threads, the atexit hooks that MLflow, logging and
multiprocessing register, the standard streams) and ends the process at once."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def exit_code(code: object) -> int:
    """The status `sys.exit(code)` gives: None is 0, an int its low byte, anything else (a
    message, printed to stderr) 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def exit_now(code: object = 0) -> NoReturn:
    """End the threads and run the atexit hooks as an interpreter exit would,
    flush the standard streams, then end the process with `code`'s status. Under a profiler
    or a tracer, exit as usual instead."""
    status = exit_code(code)
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)  # a profiler or tracer (cProfile, coverage) writes its results after this
    try:
        # what an interpreter exit does first: the threading module's exit hooks (they end
        # thread pools' idle workers), then a join of every non-daemon thread
        threading._shutdown()  # noqa: SLF001
        atexit._run_exitfuncs()  # noqa: SLF001 - the hooks an exit runs (logging.shutdown among them)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing left to flush into
                pass
    finally:
        os._exit(status)


def run_then_exit(main: Callable[[], object]) -> NoReturn:
    """Run a command's `main`, then end its process with `exit_now`: the status `sys.exit` gave,
    else 0. Any other exception ends it as usual (its traceback, status 1)."""
    try:
        main()
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)
