"""A busy or broken environment: pipelines started together on a new store, stores and study
databases that do not answer, read-only folders and full disks (in a private mount namespace: root
ignores file modes). Each ends with one line, loses nothing and leaves nothing running.
Interruptions (signals, killed processes) are in test_interruptions.py."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, TINY
from mlflow.tracking import MlflowClient
from python_runner import AT_THE_START, run_python, start_python

from pipeline.errors import PipelineError
from pipeline.faults import explain
from pipeline.tracking.store import probe

QUICK = ["candidates=[linear]", "stages=[prepare,train,evaluate,register]"]  # seconds, every stage run
MODEL = "breast_cancer"  # the registered model of the default data set
DECISION = "registry.decision"


# --- helpers ----------------------------------------------------------------------------------


def _db(store: str) -> Path:
    return Path(store[len("sqlite:///") :])


def _cli(store: str, out: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        *TINY,
        "tracking.system_metrics=true",  # its thread must end with the runs a fault ends
        f"tracking.uri={store}",
        f"hydra.run.dir={out}",
        *overrides,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def _one_error_line(stderr: str) -> str:
    """The whole of stderr is one `error:` line (no traceback, no `--- Logging error ---`)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def _runs(store: str) -> list:
    client = MlflowClient(tracking_uri=store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000) if experiments else []


def _running(store: str) -> list[str]:
    return [r.info.run_name for r in _runs(store) if r.info.status == "RUNNING"]


def _closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung server or a dropped
    route): only a timeout ends a wait on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _with_experiment(store: str) -> Path:
    """The store's experiment created now (as an earlier run would have), with its artifacts in
    the store's `mlruns/`; returns that folder."""
    artifacts = _db(store).parent / "mlruns"
    artifacts.mkdir(exist_ok=True)
    MlflowClient(tracking_uri=store).create_experiment("pipeline", artifact_location=artifacts.as_uri())
    return artifacts


# --- a private mount namespace: read-only folders and full disks, for this test's commands only


# as root a mount namespace is enough; another user may map itself to root in a user namespace
UNSHARE = (["unshare", "-m"], ["unshare", "--map-root-user", "-m"])


def _unshare() -> list[str] | None:
    """The first way to unshare mounts that can mount a small disk here, or None."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for command in UNSHARE:
            try:
                done = subprocess.run(
                    [*command, "sh", "-c", small_disk(Path(folder), "64k")], capture_output=True, timeout=60
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0:
                return command
    return None


@pytest.fixture(scope="module")
def mounts() -> list[str]:
    if command := _unshare():
        return command
    if os.environ.get("CI"):
        pytest.fail(
            "`unshare -m` (a mount namespace, as root or in a user namespace) is required when CI is set"
        )
    pytest.skip("`unshare -m` does not work here: it needs root, or user namespaces")


def read_only(folder: Path) -> str:
    return f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}"


def small_disk(folder: Path, size: str) -> str:
    return f"mount -t tmpfs -o size={size} tmpfs {folder}"


def fill(folder: Path, leave: int = 0) -> str:
    """Fill the disk of `folder`, leaving about `leave` bytes."""
    code = (
        "import os, sys; s = os.statvfs(sys.argv[1]); n = s.f_bavail * s.f_frsize - int(sys.argv[2]);"
        "open(os.path.join(sys.argv[1], 'filler'), 'wb').write(b'0' * max(n, 0))"
    )
    return shlex.join([sys.executable, "-c", code, str(folder), str(leave)])


@dataclass
class Step:
    rc: int
    stdout: str
    stderr: str


def in_namespace(
    mounts: list[str], *lines: str | list[str], cwd: Path = ROOT, timeout: float = 400
) -> list[Step]:
    """Run shell lines (str: they must succeed) and `python -m` commands (list: their output is
    returned, run in `cwd`) one after another in a private mount namespace, so that its mounts vanish with it.
    A sleeping process holds the namespace; `python -m` commands join it from the tests' python
    server (`python_runner.py`), shell lines through `nsenter`."""
    holder = subprocess.Popen([*mounts, "sleep", "3600"], stdin=subprocess.DEVNULL)
    user = "--map-root-user" in mounts  # a user namespace too: joined first
    namespaces = [f"/proc/{holder.pid}/ns/{kind}" for kind in (("user", "mnt") if user else ("mnt",))]
    joined = [
        "nsenter",
        "-t",
        str(holder.pid),
        *(["-U", "--preserve-credentials"] if user else []),
        "-m",
    ]
    try:
        _wait_for_namespace(holder)
        steps = []
        for line in lines:
            if isinstance(line, str):
                done = subprocess.run(
                    [*joined, "sh", "-c", line],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    env=_env(),
                )
                assert done.returncode == 0, (line, done.stderr[-3000:])
                continue
            assert line[:2] == [sys.executable, "-m"], f"a `python -m` command, not {line[:2]}"
            done = run_python(line, cwd=cwd, env=_env(), timeout=timeout, namespaces=namespaces)
            steps.append(Step(done.returncode, done.stdout, done.stderr))
        return steps
    finally:
        holder.kill()
        holder.wait()


def _wait_for_namespace(holder: subprocess.Popen) -> None:
    """Until `unshare` has moved the holder into its own mount namespace (it then execs sleep)."""
    deadline = time.monotonic() + 30
    while os.readlink(f"/proc/{holder.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
        assert holder.poll() is None and time.monotonic() < deadline, "the mount namespace did not start"
        time.sleep(0.01)


# --- faults told in one line (no process needed) -----------------------------------------------


def test_a_bare_write_on_a_full_disk_names_its_file():
    # write() raises ENOSPC without a file name; the line still names the file
    with pytest.raises(OSError) as raised:
        Path("/dev/full").write_bytes(b"0" * 100)
    line = explain(raised.value)
    assert line == (
        "cannot write /dev/full: no space is left on the device; "
        "free space on that disk, or choose a folder on another one"
    )


def test_a_failed_copy_names_the_file_it_was_writing_not_its_source(tmp_path):
    # shutil's fast copy names its source first and the destination second
    failure = OSError(28, "No space left on device", str(tmp_path / "tmpabc" / "model.pkl"))
    failure.filename2 = "/store/mlruns/1/artifacts/model.pkl"
    assert explain(failure).startswith("cannot write /store/mlruns/1/artifacts/model.pkl: no space")


def test_the_stores_own_words_become_its_path_and_the_cause():
    failure = RuntimeError("(sqlite3.OperationalError) database or disk is full")
    line = explain(failure, "/data/store/mlflow.db")
    assert line.startswith("cannot write the tracking store /data/store/mlflow.db: no space is left")
    assert line.endswith("or set tracking.uri to a writable store")
    readonly = RuntimeError("(sqlite3.OperationalError) attempt to write a readonly database")
    assert "the file system is read-only; make its folder writable" in explain(readonly, "/x.db")
    # a file of the store's own folder: the fix says which setting moves it
    locks = OSError(30, "Read-only file system", "/data/store/locks")
    assert explain(locks, "/data/store/mlflow.db") == (
        "cannot write /data/store/locks: the file system is read-only; "
        "choose a writable folder (tracking.uri sets the store's folder)"
    )
    assert explain(ValueError("a bug")) is None


@pytest.mark.parametrize("scheme", ["http", "postgresql"])
def test_the_probe_gives_up_on_a_silent_server_within_its_timeout(scheme, silent_port):
    uri = f"{scheme}://u:secret@127.0.0.1:{silent_port}/db"
    started = time.monotonic()
    with pytest.raises(PipelineError) as raised:
        probe(uri, 1.0)
    assert time.monotonic() - started < 5
    assert str(raised.value).startswith(f"cannot reach the MLflow store at {scheme}://u:***@127.0.0.1")
    assert "secret" not in str(raised.value) and "check tracking.uri" in str(raised.value)


def test_the_probe_passes_a_server_that_answers_even_with_credentials_in_its_uri():
    import http.server
    import threading

    asked = []

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name for it
            asked.append(self.path)
            self.send_response(401)  # it answered: reachable, whatever it thinks of us
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe(f"http://admin:secret@127.0.0.1:{server.server_port}/prefix/", 5.0)
    finally:
        server.shutdown()
        server.server_close()
    assert asked == ["/prefix/health"]


# --- busy: pipelines started together ---------------------------------------------------------


REAPER = (
    AT_THE_START
    + """
from mlflow.tracking import MlflowClient
from pipeline.tracking.store import end_killed
client = MlflowClient(tracking_uri=sys.argv[1])
wait_for_the_start()
for run_id in sys.argv[3:]:
    end_killed(client, run_id, "process 1 on here died while it ran")
"""
)


def test_processes_that_reap_the_same_dead_runs_at_once_all_succeed(store):
    """Workers that start together after another one died all end its runs KILLED: MLflow's SQL
    store inserts a new tag without a lock, so two of them can write the same tag at once (a
    plain `set_tag` fails on that)."""
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("reaped")
    runs = [client.create_run(experiment).info.run_id for _ in range(30)]
    start = time.time() + 3  # every process imported and connected, then all write at once
    reapers = [
        start_python([sys.executable, "-c", REAPER, store, str(start), *runs], cwd=ROOT, env=_env())
        for _ in range(4)
    ]
    for reaper in reapers:
        out, err = reaper.communicate(timeout=120)
        assert reaper.returncode == 0, err[-2000:]
    for run_id in runs:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags["killed.reason"] == "process 1 on here died while it ran"


DATASET_LOGGER = (
    AT_THE_START
    + """
import mlflow, pandas as pd
from mlflow.entities import DatasetInput
from mlflow.tracking import MlflowClient
from pipeline.tracking.store import log_dataset
client = MlflowClient(tracking_uri=sys.argv[1])
frame = pd.DataFrame({"x": [1.0, 2.0]})
inputs = [DatasetInput(mlflow.data.from_pandas(frame, name=f"split{i}", digest="d1")._to_mlflow_entity())
          for i in range(20)]
wait_for_the_start()
for entry in inputs:
    log_dataset(client, sys.argv[3], entry)
"""
)


def test_runs_that_log_the_same_datasets_at_once_all_succeed(store):
    """Pipelines of the same data started together each log its splits as dataset inputs: MLflow's
    SQL store inserts a new dataset without a lock, so two runs can insert the same one at once."""
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("datasets")
    runs = [client.create_run(experiment).info.run_id for _ in range(4)]
    start = time.time() + 3  # every process imported and connected, then all write at once
    loggers = [
        start_python([sys.executable, "-c", DATASET_LOGGER, store, str(start), run], cwd=ROOT, env=_env())
        for run in runs
    ]
    for logger in loggers:
        out, err = logger.communicate(timeout=120)
        assert logger.returncode == 0, err[-2000:]
    for run_id in runs:
        names = sorted(d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs)
        assert names == sorted(f"split{i}" for i in range(20))


@pytest.mark.slow
def test_three_pipelines_started_together_on_a_new_store_all_finish_with_one_champion(tmp_path):
    store = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"  # no schema yet: all three would create it
    processes = [
        start_python(_cli(store, tmp_path / f"out{i}", *QUICK), cwd=ROOT, env=_env()) for i in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    client = MlflowClient(tracking_uri=store)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 3
    decisions = sorted(v.tags[DECISION] for v in versions)
    assert decisions == ["challenger", "challenger", "champion"]
    champion = str(client.get_registered_model(MODEL).aliases["champion"])
    assert [v.tags[DECISION] for v in versions if str(v.version) == champion] == ["champion"]
    assert _running(store) == []


# --- broken: a store or a study database that does not answer --------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "tracking server refuses",
        "tracking database refuses",
        "study database refuses",
        "study database silent",
    ],
)
def test_an_unreachable_store_stops_the_run_in_one_line_within_seconds(case, store, tmp_path, silent_port):
    closed = _closed_port()
    overrides = {
        "tracking server refuses": [f"tracking.uri=http://127.0.0.1:{closed}", *QUICK],
        "tracking database refuses": [f"tracking.uri=postgresql://u@127.0.0.1:{closed}/db", *QUICK],
        "study database refuses": [
            f"tune.storage=postgresql://u@127.0.0.1:{closed}/db",
            "stages=[prepare,tune]",
        ],
        # a database that never answers held the command for minutes
        "study database silent": [
            f"tune.storage=postgresql://u@127.0.0.1:{silent_port}/db",
            "stages=[prepare,tune]",
            "tracking.connect_timeout=2",
        ],
    }[case]
    started = time.monotonic()
    done = run_python(_cli(store, tmp_path / "out", *overrides), cwd=ROOT, timeout=120, env=_env())
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    line = _one_error_line(done.stderr)
    what, key = ("study storage", "tune.storage") if "study" in case else ("MLflow store", "tracking.uri")
    assert line.startswith(f"error: cannot reach the {what} at "), line
    assert f"check {key}" in line
    assert took < 15, f"{case} took {took:.1f}s"
    assert _running(store) == []


# --- broken: read-only folders and full disks --------------------------------------------------


@pytest.mark.slow
def test_a_read_only_store_stops_the_run_in_one_line(mounts, store, tmp_path):
    _with_experiment(store)
    folder = _db(store).parent
    [run] = in_namespace(mounts, read_only(folder), _cli(store, tmp_path / "out", *QUICK))
    assert run.rc == 2
    line = _one_error_line(run.stderr)
    assert line.startswith(f"error: cannot write {folder}/") and "the file system is read-only" in line
    assert _running(store) == []


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_an_unwritable_artifact_folder_stops_the_run_in_one_line_and_ends_its_runs(
    fault, mounts, store, tmp_path
):
    artifacts = _with_experiment(store)
    # full: room for the parent run's first files, not for the stages' outputs
    setup = (
        [read_only(artifacts)]
        if fault == "read-only"
        else [small_disk(artifacts, "4m"), fill(artifacts, 96 << 10)]
    )
    [run] = in_namespace(mounts, *setup, _cli(store, tmp_path / "out", *QUICK))
    assert run.rc == 2
    line = _one_error_line(run.stderr)
    cause = "the file system is read-only" if fault == "read-only" else "no space is left on the device"
    assert line.startswith(f"error: cannot write {artifacts}/") and cause in line, line
    # the store itself could still be written: every run ended
    assert _running(store) == []
    [parent] = [r for r in _runs(store) if r.data.tags.get("stage") == "pipeline"]
    assert parent.info.status == "FAILED"
    assert "Errno" in parent.data.tags["error"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_an_unwritable_study_journal_stops_the_run_in_one_line_and_ends_its_runs(
    fault, mounts, store, tmp_path
):
    studies = tmp_path / "studies"
    studies.mkdir()
    journal = studies / "optuna.journal"
    # full: room for the study and the first epochs of its first trial (its MLflow run open)
    setup = (
        [read_only(studies)] if fault == "read-only" else [small_disk(studies, "256k"), fill(studies, 8192)]
    )
    overrides = [f"tune.storage={journal}", "stages=[prepare,tune]", "tune.epochs=100", "tune.pruner=none"]
    [run] = in_namespace(mounts, *setup, _cli(store, tmp_path / "out", *overrides))
    assert run.rc == 2
    line = _one_error_line(run.stderr)
    cause = "the file system is read-only" if fault == "read-only" else "no space is left on the device"
    assert line.startswith(f"error: cannot write {journal}: {cause}"), line
    # the MLflow store could still be written: every run ended, a trial's too
    assert _running(store) == []
    trials = [r.info.status for r in _runs(store) if r.data.tags.get("stage") == "tune.trial"]
    assert trials == (["FAILED"] if fault == "full" else [])


@pytest.mark.parametrize(("fault", "multirun"), [("read-only", False), ("read-only", True), ("full", False)])
def test_an_unwritable_working_directory_stops_before_hydra_writes_in_it(
    fault, multirun, mounts, store, tmp_path
):
    # Hydra writes its folder (outputs/ or multirun/ here) before the run starts, and reports its
    # own failure with a traceback; a full disk still takes the empty file of a plain check
    here = tmp_path / "here"
    here.mkdir()
    setup = read_only(here) if fault == "read-only" else f"{small_disk(here, '512k')} && {fill(here)}"
    flags = ["-m"] if multirun else []
    command = [sys.executable, "-m", "pipeline", *flags, *TINY, f"tracking.uri={store}", *QUICK]
    [run] = in_namespace(mounts, setup, command, cwd=here)
    assert run.rc == 2
    line = _one_error_line(run.stderr)
    cause = "the file system is read-only" if fault == "read-only" else "no space is left on the device"
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    assert (
        line
        == f"error: cannot write in {here}: {cause}; run from a writable folder or set {key}=<a writable folder>"
    )
    assert _runs(store) == []


@pytest.mark.slow
def test_a_store_on_a_full_disk_stops_the_run_in_one_line_naming_it(mounts, store, tmp_path):
    _with_experiment(store)
    folder, db = _db(store).parent, _db(store)
    kept = tmp_path / "mlflow.db"
    shutil.copy(db, kept)
    after = tmp_path / "after.db"
    [run] = in_namespace(
        mounts,
        small_disk(folder, "4m"),
        f"cp {kept} {db}",
        fill(folder),
        _cli(store, tmp_path / "out", *QUICK),
        f"cp {db} {after}",  # the disk vanishes with the namespace
    )
    assert run.rc == 2
    line = _one_error_line(run.stderr)
    assert line.startswith(f"error: cannot write the tracking store {db}: "), line
    assert "no space" in line or "full" in line
    assert _running(f"sqlite:///{after}") == []


@pytest.mark.slow
def test_a_disk_that_fills_during_the_run_stops_it_in_one_line_and_the_next_run_ends_what_it_left(
    mounts, store, tmp_path
):
    # the store, its artifacts and the run's log on one disk with a little room: it fills while
    # the stages save their outputs, and the log file can no longer be written either
    _with_experiment(store)
    folder, db = _db(store).parent, _db(store)
    kept, after = tmp_path / "mlflow.db", tmp_path / "after.db"
    shutil.copy(db, kept)
    steps = in_namespace(
        mounts,
        small_disk(folder, "8m"),
        f"cp {kept} {db} && mkdir {folder / 'mlruns'}",
        fill(folder, 640 << 10),
        _cli(store, folder / "out", *QUICK),
        f"rm {folder / 'filler'}",  # space freed
        _cli(store, folder / "out2", "stages=[prepare]", "candidates=[linear]"),
        f"cp {db} {after}",
    )
    full, later = steps
    assert full.rc == 2
    line = _one_error_line(full.stderr)
    assert line.startswith("error: cannot write ") and str(folder) in line and "no space" in line, line
    assert later.rc == 0, later.stderr[-3000:]
    assert _running(f"sqlite:///{after}") == []


# --- interrupted: signals with parallel tuning workers ----------------------------------------
