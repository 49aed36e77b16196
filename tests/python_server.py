"""A server that imported what `python -m pipeline` and its tools import, then forks one process
per request and runs `python -m <module> <args>` (or `python -c <code> <args>`) in it (see
`python_runner.py`).

Each request is served by a supervisor (a fork) that forks the run, sends its pid, waits for it
and sends its exit status, so that several runs can be alive at once while this process stays
single-threaded (forking a multi-threaded process is not safe)."""

from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import json
import os
import runpy
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

# the imports every run would pay; a run imports nothing else twice
import matplotlib.pyplot  # noqa: F401
import mlflow  # noqa: F401
import optuna  # noqa: F401
import sklearn.ensemble  # noqa: F401
import torch  # noqa: F401
from hydra import main  # noqa: F401

import pipeline.reproduce  # noqa: F401
import pipeline.runner  # noqa: F401
import pipeline.serving.cli  # noqa: F401
import pipeline.stages.evaluate  # noqa: F401
import pipeline.stages.register  # noqa: F401
import pipeline.stages.train  # noqa: F401
import pipeline.stages.tune  # noqa: F401
import pipeline.training.loop  # noqa: F401
from pipeline.shutdown import exit_code

# and what a run imports only when it gets there (the SQL store and its migrations, the model
# files, the optimizers' compiler hooks, git for the source version): seconds a run otherwise
LATER_IMPORTS = (
    "alembic.command",
    "alembic.config",
    "filelock",
    "git",
    "mlflow.pyfunc.scoring_server",
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.system_metrics.system_metrics_monitor",
    "mlflow.tracing.export.mlflow_v3",
    "narwhals._pandas_like.dataframe",
    "optuna.importance",
    "pipeline.codes",
    "pipeline.faults",
    "pipeline.families.hist_gradient_boosting",
    "pipeline.families.linear",
    "pipeline.families.network",
    "pipeline.families.random_forest",
    "pipeline.model_card",
    "pipeline.plots",
    "pipeline.report",
    "pipeline.serving.packaging",
    "pipeline.summary",
    "pyarrow.parquet",
    "skops.io",
    "sklearn.datasets",
    "torch._dynamo",
)
for name in LATER_IMPORTS:
    importlib.import_module(name)
# what a run works out once a process from the code and the installed packages (the config
# schema it stores and lists, the versions it records and pins): 30-100 ms each
importlib.import_module("pipeline.config.schema").register_schemas()
importlib.import_module("pipeline.config.overrides")._schema_keys()
importlib.import_module("pipeline.tracking.provenance").package_versions()
importlib.import_module("pipeline.serving.packaging").pip_requirements({"network"})
importlib.import_module("pipeline.serving.bundle").bundled_modules()
# MLflow's map of installed packages to their modules, which logging a model builds once (a scan
# of every installed package's files, about a second); nothing installs packages during the tests
importlib.import_module("mlflow.utils.requirements_utils")._init_modules_to_packages_map()
importlib.import_module("python_runner").remember_the_schema_head()

PR_SET_PDEATHSIG = 1


def read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the client went away")
        data += chunk
    return data


CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000


def enter(namespaces: list[str]) -> None:
    """Join another process's namespaces (`/proc/<pid>/ns/user`, then `.../mnt`), as `nsenter`
    does: a run that sees a test's private mounts (a single-threaded process may join them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for path in namespaces:
        kind = CLONE_NEWUSER if path.endswith("/user") else CLONE_NEWNS
        fd = os.open(path, os.O_RDONLY)
        if libc.setns(fd, kind) != 0:
            raise OSError(ctypes.get_errno(), f"cannot join {path}")
        os.close(fd)


def become(request: dict) -> None:
    """Turn this forked process into what `python -m` would have started: its own arguments,
    environment, working folder and standard streams."""
    # appending: stdout and stderr may share one file, like `stderr=subprocess.STDOUT`
    written = os.O_WRONLY | os.O_APPEND
    for fd, name, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], written),
                           (2, request["stderr"], written)):  # fmt: skip
        target = os.open(name, mode)
        os.dup2(target, fd)
        os.close(target)
    enter(request["namespaces"])  # its streams were opened outside, as a parent's redirections are
    if request["new_session"]:
        os.setsid()  # like start_new_session=True: its own process group
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    # `python -m` puts the working folder first, `python -c` the empty path (the same folder)
    sys.path[:1] = [request["cwd"] if request["flag"] == "-m" else "", *extra]
    sys.argv = [request["flag"], *request["args"][1:]]


def run(request: dict) -> None:
    become(request)
    if request["flag"] == "-c":
        code = compile(request["args"][0], "<string>", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102 - what `python -c` does
    else:
        module = request["args"][0]
        sys.modules.pop(f"{module}.__main__", None)  # a package's __main__ runs as `python -m` runs it
        runpy.run_module(module, run_name="__main__", alter_sys=True)


def exit_like_the_interpreter(body: Callable[[dict], None], request: dict) -> NoReturn:
    """Run `body`, then end the process as CPython ends it (uncaught exceptions, SystemExit codes,
    non-daemon threads joined, atexit handlers, streams flushed, KeyboardInterrupt re-raised as
    SIGINT), but without tearing down the modules imported before the fork: that teardown frees
    nothing a process that is about to exit needs, and costs about 0.3 s a run."""
    status = 1
    try:
        try:
            body(request)
            status = 0
        except SystemExit as exit:
            status = exit_code(exit.code)
        except BaseException as error:  # noqa: BLE001 - what the interpreter does with an uncaught one
            sys.excepthook(type(error), error, error.__traceback__)
            status = -signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
        threading._shutdown()  # noqa: SLF001 - joins non-daemon threads, as before atexit at exit
        atexit._run_exitfuncs()  # noqa: SLF001
    finally:  # whatever happens on the way out, this process never returns to the server's loop
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if status == -signal.SIGINT:  # CPython's exit after an uncaught KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(status)


def supervise(conn: socket.socket, request: dict) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the run waits for its own children
    pid = os.fork()
    if pid == 0:
        conn.close()
        exit_like_the_interpreter(run, request)
    conn.sendall(f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    os._exit(0)


def serve(address: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped without waiting
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)
    # what was imported above lives as long as the interpreter: without this, the collection at
    # every run's exit walks it all and copies each page it touches (over a second a run)
    gc.freeze()
    while True:
        conn, _ = listener.accept()
        request = json.loads(read_line(conn))
        if os.fork() == 0:  # no try/finally here: the run's own exit must reach the interpreter
            listener.close()
            supervise(conn, request)
        conn.close()


if __name__ == "__main__":
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the test process
    serve(sys.argv[1])
