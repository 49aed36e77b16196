"""The MLflow store: where it is, connecting to it, runs that never stay RUNNING, orphans of dead
processes, finding the upstream run of a stage, and links into the UI."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run, RunTag
from mlflow.tracking import MlflowClient

from pipeline.errors import PipelineError, UpstreamMissing
from pipeline.shutdown import interrupts_held
from pipeline.tracking.provenance import mask, process_alive

log = logging.getLogger(__name__)


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


def probe(
    uri: str,
    timeout: float | None,
    what: str = "the MLflow store",
    key: str = "tracking.uri",
    start: str = "start it (make server)",
) -> None:
    """Reach a server or database (`what`, set by `key`) within `timeout` seconds before any work,
    or stop with one line: a server's requests and a database's connections otherwise wait
    minutes before failing. Later requests keep their own patience (a model upload may rightly
    take long)."""
    if timeout is None or uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return
    try:
        if uri.startswith(("http://", "https://")):
            _probe_http(uri, timeout)
        else:
            _probe_database(uri, timeout)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - refused, timed out, unknown host, bad credentials
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(
            f"cannot reach {what} at {mask(uri)} within {timeout:g}s ({mask(reason)[:200]}); "
            f"{start} or check {key} (tracking.connect_timeout sets the patience)"
        ) from None


def _probe_http(uri: str, timeout: float) -> None:
    import urllib.error
    import urllib.parse
    import urllib.request

    # urllib takes `user:password@` for a part of the host name; the health check needs neither
    parts = urllib.parse.urlsplit(uri)
    url = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], path=f"{parts.path.rstrip('/')}/health")
    try:
        with urllib.request.urlopen(urllib.parse.urlunsplit(url), timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (401 without credentials, 404 behind a proxy): it is reachable


def _probe_database(uri: str, timeout: float) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": max(1, int(timeout))})
    try:
        with engine.connect():
            return
    finally:
        engine.dispose()


def connect(uri: str | None, experiment: str) -> str:
    """Point MLflow at the store, create it and the experiment if needed; returns the experiment id.

    Called once before any worker starts, so parallel processes never race to create the schema.
    """
    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    store_dir = local_store_dir(resolved)
    if store_dir is None:
        return _experiment(resolved, experiment, None)
    store_dir.mkdir(parents=True, exist_ok=True)
    # processes that start together on a new SQLite store would race through MLflow's schema
    # migration ("duplicate column name"): the first creates it while the others wait
    with lock(store_dir, "store"):
        return _experiment(resolved, experiment, store_dir)


def lock(store_dir: Path, name: str, timeout: float = 600) -> Any:
    """A file lock in the store's `locks/` folder (ignored by git, removed by make clean-store)."""
    from filelock import FileLock

    folder = store_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{name}.lock"), timeout=timeout)


def _experiment(resolved: str, experiment: str, store_dir: Path | None) -> str:
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
    except Exception as exc:  # MLflow's errors, the HTTP client's and the database driver's
        error = _store_error(exc, resolved, store_dir)
        if error is exc:
            raise
        raise error from None


def _store_error(exc: Exception, resolved: str, store_dir: Path | None) -> Exception:
    """One line for a store that cannot be used: a fault of its disk, an unreachable server, or
    what MLflow said; anything else is raised as it is."""
    from pipeline.faults import explain

    where = resolved[len("sqlite:///") :] if store_dir is not None else mask(resolved)
    if (line := explain(exc, where)) is not None:
        return PipelineError(line)
    driver = "OperationalError" in type(exc).__name__
    # a local database's own error (e.g. locked by another program) says more than "reach"
    if isinstance(exc, mlflow.exceptions.MlflowException) or (driver and store_dir is not None):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return PipelineError(f"cannot use the MLflow store at {mask(resolved)}: {mask(first)[:300]}")
    if driver or "Connection" in type(exc).__name__:
        return PipelineError(
            f"cannot reach the MLflow store at {mask(resolved)}; start it (make server) or set tracking.uri"
        )
    return exc


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
    system_metrics: bool = False,
) -> Iterator[Run]:
    """An MLflow run that ends FINISHED, FAILED (an error) or KILLED (Ctrl-C, SIGTERM)."""
    active = None
    try:
        with interrupts_held():  # a run created is a run to end
            active = mlflow.start_run(
                run_id=run_id,
                experiment_id=experiment_id,
                run_name=None if run_id else name,
                nested=nested,
                tags=tags,
                log_system_metrics=system_metrics,
            )
        yield active
    except BaseException as exc:
        if active is not None:
            _end(active.info.run_id, experiment_id, *_ending(exc))
        raise
    else:
        mlflow.end_run("FINISHED")


@contextmanager
def detached_run_scope(name: str, experiment_id: str, tags: dict[str, str]) -> Iterator[Run]:
    """A run under the active run, kept off this thread's stack of active runs, so that the runs
    opened while it is still open nest under the active run, not under it. It ends as
    `run_scope`'s do, when the scope does (in any thread)."""
    parent = mlflow.active_run()
    assert parent is not None, "a detached run opens under an active run"
    client, run = MlflowClient(), None
    try:
        with interrupts_held():  # a run created is a run to end
            run = client.create_run(
                experiment_id, run_name=name, tags={**tags, "mlflow.parentRunId": parent.info.run_id}
            )
        yield run
    except BaseException as exc:
        if run is not None:
            _end_detached(client, run.info.run_id, *_ending(exc))
        raise
    else:
        client.set_terminated(run.info.run_id, "FINISHED")


def _ending(exc: BaseException) -> tuple[str, str | None]:
    """How a run ends on `exc`: KILLED (Ctrl-C, SIGTERM), else FAILED with the masked error."""
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", None
    return "FAILED", f"{type(exc).__name__}: {mask(str(exc))}"[:5000]


def _end_detached(client: MlflowClient, run_id: str, status: str, error: str | None = None) -> None:
    try:
        if error:
            client.set_tag(run_id, "error", error)
        client.set_terminated(run_id, status)
    except Exception as exc:  # noqa: BLE001 - the original error is raised after this
        log.warning("could not end run %s %s: %s", run_id, status, exc)


def _end(run_id: str, experiment_id: str, status: str, error: str | None = None) -> None:
    """End a run after a failure, and the runs this process opened under it and left running
    (a tuning trial whose study could not record it: a full disk under the journal), as far as
    the store can still be written; the failure itself is what the person needs to see."""
    _end_children(run_id, experiment_id, status)
    try:
        if error:
            mlflow.set_tag("error", error)
        mlflow.end_run(status)
    except Exception as exc:  # noqa: BLE001 - the original error is raised after this
        log.warning("could not end run %s %s: %s", run_id, status, exc)
        while mlflow.active_run() is not None and mlflow.active_run().info.run_id == run_id:
            try:
                mlflow.end_run(status)
            except Exception:  # noqa: BLE001
                break


def _end_children(run_id: str, experiment_id: str, status: str) -> None:
    client = MlflowClient()
    mine = f"tags.mlflow.parentRunId = '{run_id}' and tags.pid = '{os.getpid()}'"
    try:
        for child in client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and {mine}"):
            client.set_tag(child.info.run_id, "error", f"its parent run ended {status} while it ran")
            client.set_terminated(child.info.run_id, status)
    except Exception as exc:  # noqa: BLE001 - the next invocation reaps them once this process is gone
        log.warning("could not end the runs under run %s: %s", run_id, exc)


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
            end_killed(client, orphan.info.run_id, f"process {pid} on {host} died while it ran")
            reaped.append(orphan.info.run_id)
    return reaped


def end_killed(client: MlflowClient, run_id: str, reason: str) -> None:
    """End a dead process's run KILLED, with the reason as a tag. Several processes may reap the
    same run at once (workers that start together after another died): the tag goes through
    `log_batch`, whose SQL store retries an insert that met the other writer's row (`set_tag`
    does not, and fails on it)."""
    client.log_batch(run_id, tags=[RunTag("killed.reason", reason)])
    client.set_terminated(run_id, "KILLED")


def log_dataset(client: MlflowClient, run_id: str, dataset: Any) -> None:
    """A dataset input of a run. Runs of the same data started together log the same dataset at
    once, and MLflow's SQL store inserts a new dataset with select-then-insert and no lock: the
    later insert collides with the other's row and its whole call is rolled back. Called again,
    it finds that row and links it."""
    try:
        client.log_inputs(run_id, datasets=[dataset])
    except mlflow.exceptions.MlflowException:
        client.log_inputs(run_id, datasets=[dataset])


def find_stage_run(experiment_id: str, stage: str, filters: dict[str, str]) -> Run | None:
    """The newest FINISHED run of `stage` whose tags match `filters`."""
    clauses = [f"tags.stage = '{stage}'", "attributes.status = 'FINISHED'"]
    clauses += [f"tags.`{k}` = '{v}'" for k, v in filters.items()]
    runs = MlflowClient().search_runs(
        [experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def resolve_from_run(run_id: str, stage: str, family: str | None = None) -> Run:
    """The run of `stage` (of `family`) that `run_id` names: that run itself, the upstream run it
    used, or its child run of that stage when it is a pipeline run."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UpstreamMissing(f"from_run={run_id} is not a run in this MLflow store") from None
    tags = run.data.tags
    if tags.get("stage") == stage and tags.get("model.family") in (None, family):
        return run
    key = stage if family is None else f"{stage}.{family}"
    if tags.get(f"upstream.{key}"):
        return client.get_run(tags[f"upstream.{key}"])
    clauses = [
        f"tags.mlflow.parentRunId = '{run_id}'",
        f"tags.stage = '{stage}'",
        "attributes.status = 'FINISHED'",
    ]
    if family is not None:
        clauses.append(f"tags.`model.family` = '{family}'")
    children = client.search_runs(
        [run.info.experiment_id],
        " and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if children:
        used = children[0].data.tags.get("reused.run")
        return client.get_run(used) if used else children[0]
    what = stage if family is None else f"{stage} {family}"
    raise UpstreamMissing(f"from_run={run_id} has no finished '{what}' run; run stage {stage} first")


def runs_table_link(ui_url: str, experiment_id: str) -> str:
    """A link that opens the runs table (the UI otherwise opens experiments in its GenAI view)."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"
