"""A command ends without the interpreter's teardown of its modules, and loses nothing by it: what
its threads, atexit hooks, log handlers and buffered streams hold is written before it ends. A
signal is held for a step that must not be cut in two."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.shutdown import interrupts_held

ROOT = Path(__file__).resolve().parent.parent

ENDING = """
import atexit, logging, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from pipeline.shutdown import exit_now

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
handler = logging.FileHandler(out / "log.txt")
handler.setFormatter(logging.Formatter("%(message)s"))
logging.getLogger("ending").addHandler(handler)
logging.getLogger("ending").warning("logged")
# an idle thread pool worker: ended by the threading module's exit hook, not joined forever
ThreadPoolExecutor(max_workers=1).submit(lambda: None).result()

def late():
    time.sleep(0.3)
    (out / "thread").write_text("done")

threading.Thread(target=late).start()  # not a daemon: the process waits for it
sys.stdout.write("buffered, no newline")
{call}
"""


def _end(tmp_path: Path, call: str, prefix: str = "") -> subprocess.CompletedProcess:
    code = prefix + ENDING.format(call=call)
    return subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("call", "status", "stderr"), [("exit_now(3)", 3, ""), ("exit_now('bad input')", 1, "bad input")]
)
def test_an_exit_now_writes_everything_and_gives_the_status(tmp_path, call, status, stderr):
    done = _end(tmp_path, call)
    assert done.returncode == status, done.stderr
    assert done.stdout == "buffered, no newline"
    assert done.stderr.strip() == stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "log.txt").read_text() == "logged\n"


TEARDOWN_MARK = """
import os
class Mark:
    def __del__(self, path=str(out / "torn-down"), create=os.open, flags=os.O_CREAT | os.O_WRONLY):
        create(path, flags)

mark = Mark()  # deleted only when the interpreter tears down the module
"""


def test_under_a_tracer_the_process_exits_as_usual(tmp_path):
    """A profiler or coverage tool writes its results in the interpreter's own exit: under a
    tracer the process is torn down as usual; otherwise the teardown is skipped."""
    code = ENDING.format(call="exit_now(4)").replace("{mark}", "")
    for tracer, torn_down in (("import sys\nsys.settrace(lambda *a: None)\n", True), ("", False)):
        (tmp_path / "torn-down").unlink(missing_ok=True)
        source = tracer + code.replace("out = Path(sys.argv[1])", "out = Path(sys.argv[1])" + TEARDOWN_MARK)
        done = subprocess.run(
            [sys.executable, "-c", source, str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 4, done.stderr
        assert done.stdout == "buffered, no newline"
        assert (tmp_path / "thread").read_text() == "done"
        assert (tmp_path / "torn-down").exists() is torn_down


STUCK_ENDING = """
import logging, sys, time
from pathlib import Path
from pipeline.shutdown import end_on_sigterm

logging.basicConfig(filename=Path(sys.argv[1]) / "pipeline.log")
end_on_sigterm(grace=1.0)
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("ending", flush=True)
    ended = time.monotonic()
    while time.monotonic() - ended < 60:  # an ending that never finishes: a store that stopped answering
        time.sleep(0.05)
"""


def test_sigterm_ends_the_process_within_its_grace_whatever_its_ending_waits_on(tmp_path):
    """The first SIGTERM interrupts the work; a second does not interrupt the ending; an ending
    still running after the grace ends the process anyway: one line, 143, the stacks in the log."""
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_ENDING)
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "ready\n"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline() == "ending\n"
        process.send_signal(signal.SIGTERM)  # ignored: the ending goes on
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, stderr
    assert time.monotonic() - started < 20
    assert "Traceback" not in stderr
    assert stderr.startswith("error: the open runs could not be ended within 1 s of SIGTERM"), stderr
    assert len(stderr.strip().splitlines()) == 1
    log = (tmp_path / "pipeline.log").read_text()
    assert "thread MainThread:" in log and 'stuck.py", line 15, in <module>\n    time.sleep(0.05)' in log


def test_a_server_that_exited_counts_as_ended_before_it_is_reaped():
    """A stopped server that is this process's child stays a zombie until reaped, and a zombie
    still answers kill(pid, 0): waiting for that to fail would always wait out the timeout."""
    from pipeline.infra import _ended
    from pipeline.tracking.provenance import process_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    status = Path(f"/proc/{child.pid}/stat")
    deadline = time.monotonic() + 30
    while status.read_text().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.05)
    assert process_alive(child.pid)  # the zombie
    assert _ended(child.pid)
    assert not status.exists()  # reaped
    assert _ended(child.pid)  # and still ended when asked again


def test_a_signal_during_a_held_step_is_handled_as_the_step_ends_and_a_second_is_not_held():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("after the first")  # still inside the step
    assert steps == ["after the first"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the user insists: the step is cut short
            steps.append("after the second")
    assert steps == ["after the first"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # an ignored signal stays ignored
    try:
        with interrupts_held():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
