"""The MLflow Model Registry, for the register stage: versions, aliases and loading a registered
model to rescore it."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient


@dataclass
class ModelVersion:
    version: str
    tags: dict[str, str]


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The version that holds `alias`, or None."""
    try:
        found = MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return ModelVersion(str(found.version), dict(found.tags))


def create_version(name: str, model_uri: str, tags: dict[str, str]) -> str:
    """A new version of `name` (created if needed) from a logged model; returns its number."""
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException:
            pass  # created by a concurrent registration
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints registry chatter
        return str(mlflow.register_model(model_uri, name, tags=tags, await_registration_for=60).version)


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def load_model(model_uri: str) -> Any:
    """A registered (or logged) model of this pipeline, checked against the digest recorded when
    it was logged before any of its code runs: loading a pyfunc imports its bundled code/."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from pipeline.tracking import integrity

    run_id, expected = record_of(model_uri)
    into = Path(tempfile.mkdtemp(prefix="model-"))
    atexit.register(shutil.rmtree, into, ignore_errors=True)  # the loaded model imports from it
    local = integrity.checked_model(model_uri, run_id, expected, into)
    return mlflow.pyfunc.load_model(str(local))


def record_of(model_uri: str) -> tuple[str | None, str | None]:
    """(train run, model digest) for `models:/name@alias`, `models:/name/version` or a logged
    model `models:/m-...`."""
    from pipeline.tracking.integrity import MODEL_TAG, version_record

    path = model_uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in path:
        name, alias = path.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
        return version_record(name, str(version))
    if "/" in path:
        name, version = path.split("/", 1)
        return version_record(name, version)
    if model_uri.startswith("models:/"):
        run_id = mlflow.get_logged_model(path).source_run_id
        return run_id, client.get_run(run_id).data.tags.get(MODEL_TAG) if run_id else None
    return None, None


def describe(name: str, version: str, description: str, tags: dict[str, str]) -> None:
    """The version's model card (its description, markdown in the registry UI) and tags to filter on."""
    client = MlflowClient()
    client.update_model_version(name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


REGISTERING_PID, REGISTERING_HOST = "registry.pid", "registry.host"  # who created a version
STALE_SECONDS = 600  # a version of another machine's registration is left alone this long


def registering_tags() -> dict[str, str]:
    """Who creates a version: once that process is gone, a version it left undecided is known
    to be abandoned rather than being decided right now."""
    from pipeline.tracking.provenance import process_tags

    return {REGISTERING_PID: process_tags()["pid"], REGISTERING_HOST: process_tags()["host"]}


def undecided_versions(name: str, decision_tag: str = "registry.decision") -> dict[str, str | None]:
    """Versions with no recorded decision whose registration was cut short, with the alias each
    holds (None: none; one killed after its alias was set holds it): the process that created
    them is gone (or, on another machine, it began long ago). Those registered before decisions
    were recorded carry no digest tag and are left alone."""
    client = MlflowClient()
    try:
        # a search leaves every version's aliases empty: the registered model holds them
        held = {str(v): alias for alias, v in client.get_registered_model(name).aliases.items()}
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return {}  # no such model yet
    left = [v for v in versions if decision_tag not in (v.tags or {}) and "model.sha256" in (v.tags or {})]
    return {
        str(v.version): held.get(str(v.version))
        for v in sorted(left, key=lambda v: int(v.version))
        if _abandoned(v)
    }


def _abandoned(version: Any) -> bool:
    import socket
    import time

    from pipeline.tracking.provenance import process_alive

    tags = version.tags or {}
    pid, host = tags.get(REGISTERING_PID, ""), tags.get(REGISTERING_HOST)
    if pid.isdigit() and host == socket.gethostname():
        return not process_alive(int(pid))
    return time.time() - (version.creation_timestamp or 0) / 1000 > STALE_SECONDS
