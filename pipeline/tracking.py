"""Everything MLflow: where the store is, run lifecycles that never leave a run RUNNING, batched
metric logging, finding upstream stage runs, saving and loading stage outputs, and what a run
records to be repeatable (git state, package versions, the resolved config with secrets masked)."""

from __future__ import annotations

import logging
import os
import platform
import queue
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from pipeline.errors import PipelineError, UpstreamMissing

log = logging.getLogger(__name__)
KEY_PACKAGES = ("torch", "mlflow", "optuna", "hydra-core", "scikit-learn", "numpy", "pandas")
_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@"
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that runs end KILLED like after Ctrl-C."""


def mask(text: str) -> str:
    """Hide passwords in URLs (`postgresql://user:secret@host` -> `postgresql://user:***@host`)."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def mask_values(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: mask_values(v) for k, v in values.items()}
    if isinstance(values, list):
        return [mask_values(v) for v in values]
    return mask(values) if isinstance(values, str) else values


def tracking_uri(uri: str | None) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else `mlflow.db` in the working directory."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if chosen.startswith("sqlite:///") and not chosen.startswith("sqlite:////"):
        chosen = f"sqlite:///{Path(chosen[len('sqlite:///') :]).resolve()}"
    return chosen


def local_store_dir(uri: str) -> Path | None:
    """The folder of a local SQLite store (its artifacts and the default study live beside it)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent
    return None


def connect(uri: str | None, experiment: str) -> str:
    """Point MLflow at the store, create it and the experiment if needed; returns the experiment id.

    Called once before any worker starts, so parallel processes never race to create the schema.
    """
    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    store_dir = local_store_dir(resolved)
    if store_dir is not None:
        store_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient()
    try:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            location = (store_dir / "mlruns").as_uri() if store_dir is not None else None
            try:
                return client.create_experiment(experiment, artifact_location=location)
            except mlflow.exceptions.MlflowException:
                found = client.get_experiment_by_name(experiment)  # another process created it
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    except mlflow.exceptions.MlflowException as exc:
        first = str(exc).splitlines()[0]
        raise PipelineError(f"cannot use the MLflow store at {mask(resolved)}: {first}") from None
    except Exception as exc:  # connection errors from the HTTP client or the database driver
        if "Connection" in type(exc).__name__ or "OperationalError" in type(exc).__name__:
            raise PipelineError(
                f"cannot reach the MLflow store at {mask(resolved)}; start it (make server) or set tracking.uri"
            ) from None
        raise


def reset_fluent_state() -> None:
    """End runs left active by an earlier job in the same process (Hydra multirun)."""
    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")


@contextmanager
def run_scope(
    name: str,
    experiment_id: str,
    tags: dict[str, str] | None = None,
    nested: bool = False,
    run_id: str | None = None,
) -> Iterator[Run]:
    """An MLflow run that ends FINISHED, FAILED (an error) or KILLED (Ctrl-C, SIGTERM)."""
    active = mlflow.start_run(
        run_id=run_id,
        experiment_id=experiment_id,
        run_name=None if run_id else name,
        nested=nested,
        tags=tags,
    )
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException as exc:
        try:
            mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
        finally:
            mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tags() -> dict[str, str]:
    """Who runs a run: `reap_orphaned_runs` ends it KILLED once that process is gone."""
    return {"pid": str(os.getpid()), "host": socket.gethostname()}


def reap_orphaned_runs(experiment_id: str) -> list[str]:
    """End KILLED the runs a process on this host left RUNNING when it died without ending them
    (SIGKILL, out of memory, power loss): runs tagged with its `pid`, and their RUNNING children."""
    client, host = MlflowClient(), socket.gethostname()
    running = "attributes.status = 'RUNNING'"
    try:
        runs = client.search_runs([experiment_id], f"{running} and tags.host = '{host}'", max_results=500)
    except mlflow.exceptions.MlflowException as exc:
        log.warning("could not look for orphaned runs: %s", exc)
        return []
    reaped: list[str] = []
    for run in runs:
        pid = run.data.tags.get("pid", "")
        if not pid.isdigit() or process_alive(int(pid)) or run.info.run_id in reaped:
            continue
        children = client.search_runs(
            [experiment_id], f"{running} and tags.mlflow.parentRunId = '{run.info.run_id}'", max_results=500
        )
        for orphan in [run, *children]:
            owner = orphan.data.tags.get("pid", pid)
            if orphan.info.run_id in reaped or (owner.isdigit() and process_alive(int(owner))):
                continue  # a child with a live process of its own goes on
            client.set_tag(orphan.info.run_id, "killed.reason", f"process {pid} on {host} died while it ran")
            client.set_terminated(orphan.info.run_id, "KILLED")
            reaped.append(orphan.info.run_id)
    return reaped


class MetricBuffer:
    """Collects per-epoch metrics and hands them, in batches, to a writer thread that sends them
    with `log_batch`: the training loop never waits on the tracking store, and the store gets a
    request every `flush_seconds` instead of one per metric. `flush()` sends what is left and
    waits until everything is written (call it before the run ends); a failed write is raised
    there."""

    def __init__(
        self, run_id: str, client: MlflowClient | None = None, flush_seconds: float = 5.0, prefix: str = ""
    ):
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.flush_seconds = flush_seconds
        self.prefix = prefix
        self.pending: list[Metric] = []
        self.last_send = time.monotonic()
        self._batches: queue.SimpleQueue[list[Metric] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(f"{self.prefix}{k}", float(v), now, step) for k, v in values.items()]
        if len(self.pending) >= 1000 or time.monotonic() - self.last_send > self.flush_seconds:
            self._send()

    def flush(self) -> None:
        if self._writer is None:  # nothing in flight: write here, no thread needed
            self._batches.put(self.pending)
            self._batches.put(None)
            self.pending = []
            self._write()
        else:
            self._send()
            self._batches.put(None)
            self._writer.join()
            self._writer = None
        self.last_send = time.monotonic()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _send(self) -> None:
        self.last_send = time.monotonic()
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        if self._writer is None:
            self._writer = threading.Thread(target=self._write, name="metric-writer", daemon=True)
            self._writer.start()
        self._batches.put(batch)

    def _write(self) -> None:
        while (batch := self._batches.get()) is not None:
            if self._error is not None:
                continue  # keep draining so flush() returns; the first error is raised there
            try:
                for start in range(0, len(batch), 1000):
                    self.client.log_batch(self.run_id, metrics=batch[start : start + 1000], synchronous=True)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread in flush()
                self._error = exc


def log_values(
    run_id: str,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, Any] | None = None,
    client: MlflowClient | None = None,
) -> None:
    """Params, metrics and tags of one run in as few requests as MLflow allows."""
    client = client or MlflowClient()
    now = int(time.time() * 1000)
    param_list = [Param(k, mask(str(v))[:6000]) for k, v in (params or {}).items()]
    metric_list = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None]
    tag_list = [RunTag(k, mask(str(v))[:5000]) for k, v in (tags or {}).items()]
    batches = max(-(-len(param_list) // 100), -(-len(tag_list) // 100), -(-len(metric_list) // 1000), 1)
    for i in range(batches):
        client.log_batch(
            run_id,
            metrics=metric_list[i * 1000 : (i + 1) * 1000],
            params=param_list[i * 100 : (i + 1) * 100],
            tags=tag_list[i * 100 : (i + 1) * 100],
        )


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def find_stage_run(experiment_id: str, stage: str, filters: dict[str, str]) -> Run | None:
    """The newest FINISHED run of `stage` whose tags match `filters`."""
    clauses = [f"tags.stage = '{stage}'", "attributes.status = 'FINISHED'"]
    clauses += [f"tags.`{k}` = '{v}'" for k, v in filters.items()]
    runs = MlflowClient().search_runs(
        [experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def resolve_from_run(run_id: str, stage: str) -> Run:
    """The run of `stage` that `run_id` names: that run itself, the upstream run it used, or its
    child run of that stage when it is a pipeline run."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UpstreamMissing(f"from_run={run_id} is not a run in this MLflow store") from None
    if run.data.tags.get("stage") == stage:
        return run
    upstream = run.data.tags.get(f"upstream.{stage}")
    if upstream:
        return client.get_run(upstream)
    children = client.search_runs(
        [run.info.experiment_id],
        f"tags.mlflow.parentRunId = '{run_id}' and tags.stage = '{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if children:
        used = children[0].data.tags.get("reused.run")
        return client.get_run(used) if used else children[0]
    raise UpstreamMissing(f"from_run={run_id} has no finished '{stage}' run; run stage {stage} first")


def save_outputs(run_id: str, output: Any) -> None:
    """Log a stage output (anything with `save(dir)`) under the run's `outputs/` artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        output.save(Path(tmp))
        MlflowClient().log_artifacts(run_id, tmp, artifact_path="outputs")


def load_outputs(run_id: str, kind: type) -> Any:
    """The stage output saved by `save_outputs`, loaded with `kind.load(dir)`."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="outputs", dst_path=tmp)
        return kind.load(Path(local))


def log_files(run_id: str, files: dict[str, str | bytes], artifact_dir: str | None = None) -> None:
    """Small text or binary files (tables, reports, decision records) as artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        MlflowClient().log_artifacts(run_id, tmp, artifact_path=artifact_dir)


def log_figures(run_id: str, figures: dict[str, Any]) -> None:
    """Matplotlib figures as PNG artifacts (closed afterwards)."""
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        for name, figure in figures.items():
            figure.savefig(Path(tmp) / name, dpi=110, bbox_inches="tight")
            plt.close(figure)
        MlflowClient().log_artifacts(run_id, tmp, artifact_path="plots")


def git_state(root: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag (and the diff when dirty), or 'no git' outside a repository."""
    cwd = str(root or Path.cwd())

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=20
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": "no git", "dirty": "unknown", "diff": ""}
    dirty = bool(status.strip())
    return {"commit": commit, "dirty": str(dirty).lower(), "diff": git("diff", "HEAD") if dirty else ""}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def runs_table_link(ui_url: str, experiment_id: str) -> str:
    """A link that opens the runs table (the UI otherwise opens experiments in its GenAI view)."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def end_runs_of_dead_process(pid: int, host: str, experiment_ids: list[str] | None = None) -> list[str]:
    """End KILLED the RUNNING runs a dead process (pid on host) owned, found from another process
    (e.g. a worker that reaped one of its trials); returns their ids."""
    client = MlflowClient()
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiment_ids,
        f"attributes.status = 'RUNNING' and tags.pid = '{pid}' and tags.host = '{host}'",
        max_results=100,
    )
    for run in runs:
        client.set_tag(run.info.run_id, "killed.reason", f"process {pid} on {host} died while it ran")
        client.set_terminated(run.info.run_id, "KILLED")
    return [r.info.run_id for r in runs]
