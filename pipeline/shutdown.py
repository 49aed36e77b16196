"""Ending a command's process without the interpreter's teardown of every loaded module.

With torch, MLflow and scikit-learn loaded, that teardown takes seconds after the work is done
(2 s here for the pipeline, and as much again for each tuning worker the command waits for),
and it writes nothing: files, runs and studies are closed by then. So a command flushes what
teardown would have flushed (its threads, the atexit hooks that MLflow, logging and
multiprocessing register, the standard streams) and ends the process at once."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

ENDING_GRACE_SECONDS = 60.0  # after SIGTERM, to end the open runs before the process exits anyway


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


def raise_on_first_sigterm() -> threading.Event:
    """SIGTERM raises `Terminated` where the program is, so that its runs and trials end KILLED
    as after Ctrl-C. Only the first one does: a second would cut that ending short. Returns the
    event set by that first one."""
    ending = threading.Event()

    def terminate(signum: int, frame: object) -> None:
        from pipeline.errors import Terminated

        if ending.is_set():
            return
        ending.set()  # no thread is started here: the interrupted code may hold threading's locks
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    return ending


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C or SIGTERM for a short step that must not be cut in two (creating a trial or a
    run: once it exists, this process must know it has it, to end it). A signal that arrives
    meanwhile is handled, by the handler it was meant for, as the step ends; a second one is not
    held (the step may be waiting on a store that stopped answering). Only the main thread
    handles signals: elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    # read before any is replaced: a signal between two replacements must not leave one held
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    handlers = {signum: handler for signum, handler in handlers.items() if callable(handler)}

    def hold(signum: int, frame: object) -> None:
        if held:
            handlers[signum](signum, frame)
        held.append(signum)

    try:
        for signum in handlers:
            signal.signal(signum, hold)
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if held:
            handlers[held[0]](held[0], None)


def end_on_sigterm(grace: float = ENDING_GRACE_SECONDS) -> None:
    """`raise_on_first_sigterm` (`docker stop`, a scheduler's cancel), with the ending bounded as a
    scheduler's grace period is: a process still there `grace` seconds later (a store that
    stopped answering) writes where each thread waited to the run's log, says so in one line and
    exits 143; the next run marks its runs KILLED."""
    ending = raise_on_first_sigterm()
    threading.Thread(target=_exit_after, args=(ending, grace), name="sigterm-grace", daemon=True).start()


def _exit_after(ending: threading.Event, grace: float) -> None:
    ending.wait()
    time.sleep(grace)
    frames = sys._current_frames()  # noqa: SLF001 - where each thread is stuck
    stacks = "\n".join(
        f"thread {thread.name}:\n{''.join(traceback.format_stack(frames[thread.ident]))}"
        for thread in threading.enumerate()
        if thread.ident in frames and thread is not threading.current_thread()
    )
    logging.getLogger("pipeline").error("the runs were not ended %.0f s after SIGTERM:\n%s", grace, stacks)
    print(f"error: the open runs could not be ended within {grace:.0f} s of SIGTERM; exiting "
          "(the next run marks them KILLED; where it waited is in the run's pipeline.log)",
          file=sys.stderr, flush=True)  # fmt: skip
    os._exit(143)
