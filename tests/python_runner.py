"""`python -m <module> <args>` (and `python -c`) for the tests, as `subprocess.run` runs it, but forked from a server
that has already imported torch, MLflow, Optuna, scikit-learn and the pipeline (`python_server.py`):
each run is still its own process, with its own arguments, environment, working folder, standard
streams and exit status, and it exits through the interpreter as usual; it just skips the 4-5 s
of imports that every fresh interpreter pays. Tests that signal a process or read what a fresh
interpreter imports start a real one with `subprocess`."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER_SCRIPT = Path(__file__).with_name("python_server.py")
START_TIMEOUT = 120.0


# set by `share_server` for the test processes that run beside the one that started it
SHARED_ADDRESS = "PIPELINE_TEST_PYTHON_SERVER"

# `python -c` code that several processes run to act at the same moment (a time in sys.argv[2])
# starts with this and calls `wait_for_the_start()`: it sleeps, then spins only the last
# milliseconds (processes that spin for seconds take the cores from everything else)
AT_THE_START = """
import sys, time


def wait_for_the_start():
    time.sleep(max(0.0, float(sys.argv[2]) - time.time() - 0.01))
    while time.time() < float(sys.argv[2]):
        pass
"""


def remember_the_schema_head() -> None:
    """MLflow parses its hundred-odd migration scripts to find the newest schema each time it opens
    a SQL store (15-20 ms), and the tests open a new store hundreds of times: the answer, which
    only an upgrade of MLflow changes, is worked out once per test process (and once for the
    runs forked from the python server)."""
    import functools

    import mlflow.store.db.utils as db_utils

    head = getattr(db_utils, "_get_latest_schema_revision", None)
    if head is None:  # another MLflow: nothing to remember
        return
    if not hasattr(head, "cache_info"):
        db_utils._get_latest_schema_revision = head = functools.cache(head)
    head()


class PythonServer:
    """The server's process (`launch`), or one that another process launched (`reach`)."""

    def __init__(self, folder: Path, process: subprocess.Popen | None) -> None:
        self.folder, self.process = folder, process
        self.address = str(folder / "socket")

    @classmethod
    def launch(cls) -> PythonServer:
        """Start a server; it is ready once `wait_ready` returns (its imports take seconds)."""
        folder = Path(tempfile.mkdtemp(prefix="python-server-"))
        with open(folder / "server.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(SERVER_SCRIPT), str(folder / "socket")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return cls(folder, process)

    @classmethod
    def reach(cls, address: str) -> PythonServer:
        return cls(Path(address).parent, None)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.address):
            gone = self.process.poll() is not None if self.process else not self.folder.exists()
            if gone or time.monotonic() > deadline:
                log = self.folder / "server.log"
                raise RuntimeError(
                    f"the test python server did not start: {_read(log) if log.exists() else ''}"
                )
            time.sleep(0.05)

    def start(
        self,
        command: list[str],
        cwd: Path,
        env: dict[str, str],
        output: Path | None,
        merge: bool,
        new_session: bool,
        namespaces: list[str],
    ) -> ForkedProcess:
        self.wait_ready()
        stamp = f"{os.getpid()}-{time.monotonic_ns()}"  # the folder may be shared by several test processes
        out = output or self.folder / f"{stamp}.out"
        err = out if merge else self.folder / f"{stamp}.err"
        for path in {out, err}:
            path.touch()
        request = {"flag": command[1], "args": command[2:], "cwd": str(cwd), "env": env, "stdout": str(out),
                   "stderr": str(err), "new_session": new_session, "namespaces": namespaces}  # fmt: skip
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.address)
        conn.sendall(json.dumps(request).encode() + b"\n")
        lines = _Lines(conn)
        return ForkedProcess(
            command, int(lines.next(timeout=START_TIMEOUT)), lines, out, err, owned=output is None
        )

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            shutil.rmtree(self.folder, ignore_errors=True)


class ForkedProcess:
    """What `subprocess.Popen` gives for a run started by the server: its pid (signals reach it as
    they reach any process), `poll`, `wait`, `communicate` and `returncode`."""

    def __init__(self, args: list[str], pid: int, lines: _Lines, out: Path, err: Path, owned: bool) -> None:
        self.args, self.pid, self.lines, self.out, self.err, self.owned = args, pid, lines, out, err, owned
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = int(self.lines.next(timeout=0.0))
            except (TimeoutError, BlockingIOError):
                return None
            self.lines.conn.close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.returncode = int(self.lines.next(timeout=timeout))
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            self.lines.conn.close()
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Waits, then returns (stdout, stderr) and removes the files that held them; on a
        timeout the run is killed and TimeoutExpired carries what it wrote."""
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait(START_TIMEOUT)
            raise subprocess.TimeoutExpired(self.args, timeout, _read(self.out), _read(self.err)) from None
        out, err = _read(self.out), "" if self.err == self.out else _read(self.err)
        if self.owned:
            for path in {self.out, self.err}:
                path.unlink()
        return out, err

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class _Lines:
    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.data = conn, b""

    def next(self, timeout: float | None) -> str:
        self.conn.settimeout(timeout)
        while b"\n" not in self.data:
            chunk = self.conn.recv(64)
            if not chunk:
                raise RuntimeError("the test python server closed the connection")
            self.data += chunk
        line, self.data = self.data.split(b"\n", 1)
        return line.decode()


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


_server: PythonServer | None = None


def start_python(
    command: list[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    output: Path | None = None,
    merge: bool = False,
    new_session: bool = False,
    namespaces: list[str] = (),
) -> ForkedProcess:
    """`subprocess.Popen` of a `[sys.executable, "-m", module, *args]` (or `"-c", code`) command,
    started from the preloaded server. Its output goes to `output` (a file that stays) or to a file
    that `communicate` reads; `merge` sends stderr to the same file, like
    `stderr=subprocess.STDOUT`; `new_session` is `start_new_session`; `namespaces` are
    `/proc/<pid>/ns/...` files the run joins first, like `nsenter`."""
    global _server
    if command[:1] != [sys.executable] or command[1:2] not in (["-m"], ["-c"]):
        raise ValueError(
            f"the test python server runs `python -m <module>` or `python -c <code>`, not {command[:2]}"
        )
    if _server is None:
        shared = os.environ.get(SHARED_ADDRESS)
        _server = PythonServer.reach(shared) if shared else PythonServer.launch()
        atexit.register(_server.close)
    environment = dict(os.environ if env is None else env)
    return _server.start(
        command, Path(cwd or os.getcwd()), environment, output, merge, new_session, list(namespaces)
    )


def share_server() -> None:
    """Start the server now, without waiting for its imports, for this process and every process
    it starts from here on (the test processes of `pytest -n`): one server's imports instead of one
    per test process, made while those processes collect the tests."""
    global _server
    if _server is None:
        _server = PythonServer.launch()
        atexit.register(_server.close)
        os.environ[SHARED_ADDRESS] = _server.address


def run_python(
    command: list[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    namespaces: list[str] = (),
) -> subprocess.CompletedProcess:
    """`subprocess.run(command, capture_output=True, text=True, ...)` for a `[sys.executable, "-m",
    module, *args]` (or `"-c", code`) command, started from the preloaded server."""
    process = start_python(command, cwd=cwd, env=env, namespaces=namespaces)
    out, err = process.communicate(timeout)
    return subprocess.CompletedProcess(command, process.returncode, out, err)
