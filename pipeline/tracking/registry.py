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
    return mlflow.pyfunc.load_model(model_uri)
