"""A busy, broken or interrupted environment: pipelines started together on a new store, stores
and study databases that do not answer, read-only folders and full disks (in a private mount
namespace: root ignores file modes), signals with parallel tuning workers, and a registration
killed halfway. Each ends with one line, loses nothing and leaves nothing running."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import ROOT, TINY
from mlflow.tracking import MlflowClient
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from pipeline.errors import PipelineError
from pipeline.faults import explain
from pipeline.tracking.store import probe
from pipeline.tuning.liveness import RUN_ID_ATTR

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
    mounts: list[str], tmp_path: Path, *lines: str | list[str], timeout: float = 400
) -> list[Step]:
    """Run shell lines (str: they must succeed) and commands (list: their output is returned) in
    a private mount namespace, so that its mounts vanish with it."""
    logs = tmp_path / "namespace"
    logs.mkdir(exist_ok=True)
    script, steps = ["set -u"], 0
    for line in lines:
        if isinstance(line, str):
            script.append(f"{line} || exit 99")
        else:
            out, err, rc = (logs / f"{steps}.{kind}" for kind in ("out", "err", "rc"))
            script.append(f"{shlex.join(line)} > {out} 2> {err}; echo $? > {rc}")
            steps += 1
    done = subprocess.run(
        [*mounts, "sh", "-c", "\n".join(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [
        Step(
            int((logs / f"{i}.rc").read_text()),
            (logs / f"{i}.out").read_text(),
            (logs / f"{i}.err").read_text(),
        )
        for i in range(steps)
    ]


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


@pytest.mark.slow
def test_three_pipelines_started_together_on_a_new_store_all_finish_with_one_champion(tmp_path):
    store = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"  # no schema yet: all three would create it
    processes = [
        subprocess.Popen(
            _cli(store, tmp_path / f"out{i}", *QUICK),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for i in range(3)
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
    done = subprocess.run(
        _cli(store, tmp_path / "out", *overrides), cwd=ROOT, capture_output=True, text=True, timeout=120, env=_env()
    )  # fmt: skip
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
    [run] = in_namespace(mounts, tmp_path, read_only(folder), _cli(store, tmp_path / "out", *QUICK))
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
    [run] = in_namespace(mounts, tmp_path, *setup, _cli(store, tmp_path / "out", *QUICK))
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
        [read_only(studies)] if fault == "read-only" else [small_disk(studies, "256k"), fill(studies, 4096)]
    )
    overrides = [f"tune.storage={journal}", "stages=[prepare,tune]", "tune.epochs=30", "tune.pruner=none"]
    [run] = in_namespace(mounts, tmp_path, *setup, _cli(store, tmp_path / "out", *overrides))
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
    [run] = in_namespace(mounts, tmp_path, setup, f"cd {here}", command)
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
        tmp_path,
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
        tmp_path,
        small_disk(folder, "8m"),
        f"cp {kept} {db} && mkdir {folder / 'mlruns'}",
        fill(folder, 1100 << 10),
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


def _study(store_dir: Path) -> optuna.Study | None:
    journal = store_dir / "optuna.journal"
    if not journal.exists():
        return None
    try:
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        [summary] = optuna.get_all_study_summaries(storage, include_best_trial=False)
        return optuna.load_study(study_name=summary.study_name, storage=storage)
    except Exception:  # noqa: BLE001 - being created
        return None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# a tuning worker's signal handling alone: it ends its "trial" in 2.5 s once signalled
ENDING_WORKER = """
import os, sys, time
from pathlib import Path
from pipeline.tuning.workers import follow_parent
marker = Path(sys.argv[2])
follow_parent(int(sys.argv[1]))
marker.write_text(f"running {os.getpid()}")
try:
    time.sleep(120)
except KeyboardInterrupt:
    time.sleep(2.5)
    marker.write_text("ended")
"""
# the worker's parent, to be killed
PARENT = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
time.sleep(120)
"""


@pytest.mark.parametrize("how", ["parent killed", "signalled twice"])
def test_a_worker_ends_its_trial_once_however_many_signals_come(how, tmp_path):
    # after its parent's death the worker is told twice (parent-death signal, then its pid check);
    # after Ctrl-C the pipeline's SIGTERM can follow the terminal's SIGINT: neither may cut the
    # ending of the trial short
    marker = tmp_path / "marker"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, ENDING_WORKER, str(marker)], cwd=ROOT, env=_env()
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text().startswith("running"):
            assert time.monotonic() < deadline and parent.poll() is None, "the worker did not start"
            time.sleep(0.1)
        worker = int(marker.read_text().split()[1])
        if how == "parent killed":
            parent.kill()
            parent.wait()
        else:
            os.kill(worker, signal.SIGTERM)
            time.sleep(0.5)
            os.kill(worker, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(worker)
        assert marker.read_text() == "ended"
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.slow
def test_tuning_workers_leave_ctrl_c_to_the_pipeline(make_cfg):
    from pipeline.tuning.workers import start_workers

    pool = start_workers(make_cfg("stages=[prepare,tune]", "tune.n_jobs=2"))
    try:
        [process] = pool.processes
        ignored = int(Path(f"/proc/{process.pid}/status").read_text().split("SigIgn:")[1].split()[0], 16)
        assert ignored & (1 << (signal.SIGINT - 1)), "the worker would be interrupted mid-trial"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this process's is back
    finally:
        pool.close()
        for process in pool.processes:
            process.join(timeout=120)


PARALLEL = [
    "stages=[prepare,tune]",
    "candidates=[network]",
    "tune.n_jobs=2",
    "tune.n_trials=8",
    "tune.epochs=400",  # trials long enough to be interrupted
    "tune.pruner=none",
    "train.early_stopping.patience=1000",
]


def _start_parallel(store: str, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A pipeline tuning with a worker process; returns once both run a trial with its MLflow
    run, with the worker's pid."""
    process = subprocess.Popen(
        _cli(store, tmp_path / "out", *PARALLEL),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # its own process group, like a command in a terminal
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.3)
        study = _study(_db(store).parent)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if study else []
        pids = {t.user_attrs.get("pid") for t in running if RUN_ID_ATTR in t.user_attrs}
        if len(pids) == 2:
            return process, next(pid for pid in pids if pid != process.pid)
    process.kill()
    raise AssertionError(f"no two trials ran at once: {process.communicate()[1][-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_interrupting_parallel_tuning_ends_every_trial_and_run(how, store, tmp_path):
    process, worker = _start_parallel(store, tmp_path)
    try:
        if how == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:  # the terminal sends SIGINT to every process of the command
            os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert _gone(worker)
    study = _study(_db(store).parent)
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    trial_runs = [r for r in _runs(store) if r.data.tags.get("stage") == "tune.trial"]
    assert {r.data.tags["pid"] for r in trial_runs} == {str(process.pid), str(worker)}
    assert _running(store) == []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        assert MlflowClient(tracking_uri=store).get_run(trial.user_attrs[RUN_ID_ATTR]).info.status == "KILLED"


@pytest.mark.slow
def test_a_worker_outlives_a_sigkilled_pipeline_by_seconds_and_the_next_run_reaps_it(
    store, run_cli, tmp_path
):
    process, worker = _start_parallel(store, tmp_path)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(worker), "the worker went on after its pipeline was killed"
    client = MlflowClient(tracking_uri=store)
    # the worker ended its own trial; the killed process's runs are left to the next run
    ended = {r.info.status for r in _runs(store) if r.data.tags.get("pid") == str(worker)}
    assert "KILLED" in ended and "RUNNING" not in ended
    left = {r.data.tags.get("stage") for r in _runs(store) if r.info.status == "RUNNING"}
    assert left == {"pipeline", "tune", "tune.trial"}

    later = run_cli("stages=[prepare]")  # any later run of the experiment
    assert later.returncode == 0, later.stderr[-3000:]
    assert "run(s) KILLED that a dead process left running" in later.stdout
    assert _running(store) == []
    [tune_run] = [r for r in _runs(store) if r.data.tags.get("stage") == "tune"]
    assert tune_run.info.status == "KILLED"
    assert f"process {process.pid}" in client.get_run(tune_run.info.run_id).data.tags["killed.reason"]


# --- interrupted: a registration killed halfway -----------------------------------------------

# the register stage held at one step (`decide`: the version exists, no alias yet; `tag`: the gate
# set the alias, the decision is not written yet), so that the test can interrupt it there
HELD_REGISTRATION = """
import sys, time
import pipeline.stages.register as register
import pipeline.tracking.registry as registry
step = sys.argv.pop(1)
decide, tag = register.decide, registry.tag_version
def held_decide(*args, **kwargs):
    time.sleep(120)
    return decide(*args, **kwargs)
def held_tag(name, version, tags):
    if tags.get("registry.decision") in ("champion", "challenger"):
        time.sleep(120)
    return tag(name, version, tags)
register.decide, registry.tag_version = held_decide, held_tag
if step == "decide":
    registry.tag_version = tag
else:
    register.decide = decide
from pipeline.__main__ import cli
cli()
"""


def _versions(store: str) -> dict[str, dict[str, str]]:
    found = MlflowClient(tracking_uri=store).search_model_versions(f"name = '{MODEL}'")
    return {str(v.version): dict(v.tags) for v in found}


def _holds_alias(store: str, version: str) -> bool:
    aliases = MlflowClient(tracking_uri=store).get_registered_model(MODEL).aliases
    return version in {str(v) for v in aliases.values()}


def _interrupt_registration(
    store: str, out: Path, step: str, sig: signal.Signals
) -> tuple[str, subprocess.CompletedProcess]:
    """A register stage signalled when held at `step`; returns its new version and its output."""
    before = set(_versions(store))
    stage = _cli(store, out, "stages=[register]", "candidates=[linear]")[3:]
    command = [sys.executable, "-c", HELD_REGISTRATION, step, *stage]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            new = set(_versions(store)) - before
            if new and (step == "decide" or _holds_alias(store, min(new))):
                process.send_signal(sig)
                stdout, stderr = process.communicate(timeout=60)
                return min(new), subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()
    raise AssertionError(f"the registration did not reach {step}: {process.communicate()[1][-3000:]}")


def _decision(store: str, version: str) -> str | None:
    return _versions(store)[version].get(DECISION)


def _left_line(version: str, decision: str) -> str:
    return (
        f"register: {MODEL} v{version} was left without a decision by an interrupted registration; "
        f"tagged {DECISION}={decision}"
    )


@pytest.mark.slow
def test_an_interrupted_registration_leaves_no_version_without_a_decision(store, run_cli, tmp_path):
    first = run_cli(*QUICK)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _decision(store, "1") == "champion"

    # SIGTERM: the version is tagged on the way out
    term, done = _interrupt_registration(store, tmp_path / "term", "decide", signal.SIGTERM)
    assert done.returncode == 130, done.stderr[-3000:]
    assert _decision(store, term) == "interrupted"
    assert _running(store) == []

    # SIGKILL: nothing can be tagged then; the next registration does it, and says so
    killed, done = _interrupt_registration(store, tmp_path / "kill", "decide", signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    assert _decision(store, killed) is None
    # ... here that next registration is killed too, once the gate set its alias (challenger)
    aliased, done = _interrupt_registration(store, tmp_path / "alias", "tag", signal.SIGKILL)
    assert _left_line(killed, "interrupted") in done.stdout
    assert _decision(store, killed) == "interrupted"
    assert _decision(store, aliased) is None and _holds_alias(store, aliased)

    later = run_cli("stages=[register]", "candidates=[linear]")
    assert later.returncode == 0, later.stderr[-3000:]
    # the alias it holds was the gate's decision
    assert _left_line(aliased, "challenger") in later.stdout
    assert _decision(store, aliased) == "challenger"
    assert all(tags.get(DECISION) for tags in _versions(store).values())
    assert _running(store) == []
