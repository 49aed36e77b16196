"""The tests' `python -m` runner (forked from a preloaded server) behaves like `subprocess.run` of
a fresh interpreter: the module from the working folder, its arguments, environment, separate
output streams, exit status, atexit handlers, signals and timeouts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from python_runner import run_python, start_python

PROBE = """
import atexit, os, sys, time
atexit.register(lambda: print("atexit ran", flush=True))
print("cwd", os.getcwd(), "env", os.environ.get("PROBE_VALUE"), "args", sys.argv[1:], "name", __name__)
print("to stderr", file=sys.stderr)
if sys.argv[1] == "sleep":
    time.sleep(60)
if sys.argv[1] == "raise":
    raise ValueError("boom")
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def probe(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PROBE_VALUE"} | extra


def test_a_run_gets_its_folder_arguments_environment_and_exit_status(probe):
    done = run_python([sys.executable, "-m", "probe", "3"], cwd=probe, env=_env(PROBE_VALUE="x"))
    assert done.returncode == 3
    assert done.stdout.splitlines() == [f"cwd {probe} env x args ['3'] name __main__", "atexit ran"]
    assert done.stderr == "to stderr\n"
    assert run_python([sys.executable, "-m", "probe", "0"], cwd=probe, env=_env()).stdout.startswith(
        f"cwd {probe} env None"
    )


def test_an_uncaught_exception_exits_1_with_its_traceback(probe):
    done = run_python([sys.executable, "-m", "probe", "raise"], cwd=probe, env=_env())
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "ValueError: boom"


def test_signals_reach_the_run_and_a_timeout_kills_it(probe):
    process = start_python([sys.executable, "-m", "probe", "sleep"], cwd=probe, env=_env())
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    with pytest.raises(subprocess.TimeoutExpired):
        run_python([sys.executable, "-m", "probe", "sleep"], cwd=probe, env=_env(), timeout=2)


def test_python_c_runs_its_code_as_main_in_its_own_session(probe):
    code = "import os, sys; print(__name__, sys.argv, os.getpgid(0) == os.getpid()); sys.exit(4)"
    process = start_python([sys.executable, "-c", code, "a"], cwd=probe, new_session=True)
    assert process.communicate(timeout=60) == ("__main__ ['-c', 'a'] True\n", "")
    assert process.returncode == 4
    with pytest.raises(ValueError, match="python -m"):
        run_python(["python3", "-c", "pass"], cwd=probe)


EXITS = {
    "message": "import sys; sys.exit('stopped: a message')",
    "large code": "import sys; sys.exit(300)",
    "ctrl-c": "raise KeyboardInterrupt",
    "thread then atexit": (
        "import atexit, threading, time\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread ended'))).start()\n"
    ),
}


@pytest.mark.parametrize("code", EXITS.values(), ids=EXITS.keys())
def test_a_run_ends_as_a_fresh_interpreter_ends(tmp_path, code):
    """The server ends a run without tearing down its preloaded modules: the exit status, what is
    printed, non-daemon threads and atexit handlers stay those of a real interpreter."""
    fresh = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    forked = run_python([sys.executable, "-c", code], cwd=tmp_path, timeout=60)
    assert forked.returncode == fresh.returncode
    assert forked.stdout == fresh.stdout
    assert forked.stderr.splitlines()[-1:] == fresh.stderr.splitlines()[-1:]
