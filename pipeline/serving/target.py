"""Which model `make serve`, `make predict` and `make dockerfile` use, from the same config (and
overrides) as the pipeline: `serve.model_uri`, else the champion of the registered model name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.errors import PipelineError

ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")


class ServingError(PipelineError):
    """A serving or batch-scoring problem the user can fix."""


@dataclass
class Target:
    """The model to serve or score with, and the store it lives in."""

    model_uri: str
    tracking_uri: str
    description: str  # e.g. "breast_cancer v3 (alias champion)"


def compose_config(overrides: list[str]) -> DictConfig:
    """The pipeline's configuration, composed from conf/ with command-line overrides, each value
    checked like the pipeline checks it (a `registry.model_name=../../x` names no model: refused
    before the store is opened). The cross-field rules are the pipeline's own: serving a table's
    champion needs its data.path, not its data.target."""
    from omegaconf import OmegaConf

    from pipeline.config.overrides import compose_checked
    from pipeline.config.validate import RULES
    from pipeline.errors import ConfigError

    cfg = compose_checked(list(overrides))
    for key, check in RULES:
        message = check(key, OmegaConf.select(cfg, key))
        if message is not None:
            raise ConfigError(message)
    return cfg


def default_model_uri(cfg: DictConfig) -> str:
    from pipeline.stages.register import CHAMPION, model_name

    if cfg.serve.model_uri:
        return str(cfg.serve.model_uri)
    if cfg.data.name == "table" and not cfg.data.path and not cfg.registry.model_name:
        raise ServingError(
            "data=table needs data.path=<the table's file> (its champion is registered under the "
            "file's name) or registry.model_name=<name>"
        )
    return f"models:/{model_name(cfg)}@{CHAMPION}"


def resolve_target(cfg: DictConfig, model_uri: str | None = None) -> Target:
    """Point MLflow at the configured store and check that the model exists (that an alias
    names a version)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.provenance import apply_credentials, mask
    from pipeline.tracking.store import local_store_dir, tracking_uri

    apply_credentials(cfg.tracking.credentials)
    uri = model_uri or default_model_uri(cfg)
    store = tracking_uri(cfg.tracking.uri)
    mlflow.set_tracking_uri(store)
    found = ALIAS_URI.match(uri)
    if found is None:
        return Target(uri, store, uri)
    name, alias = found["name"], found["alias"]
    hint = "run make pipeline first" if alias == "champion" else "register one first"
    where = f"registered model {name!r} in {mask(store)}"
    if local_store_dir(store) is not None and not Path(store[len("sqlite:///") :]).is_file():
        raise ServingError(f"no model has alias {alias}: {hint} (no tracking store at {mask(store)})")
    try:
        version = MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        raise ServingError(f"no model has alias {alias}: {hint} ({where})") from None
    except Exception as exc:  # noqa: BLE001 - an unreachable server or a broken store
        raise ServingError(f"cannot read the model registry at {mask(store)}: {type(exc).__name__}") from None
    return Target(uri, store, f"{name} v{version.version} (alias {alias})")


def load(target: Target) -> Any:
    """The pyfunc model of `target`, or one line saying why it cannot be loaded."""
    from pipeline.startup import resume_full_collections
    from pipeline.tracking import registry

    try:
        model = registry.load_model(target.model_uri)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - a wrong URI, a missing artifact, an older format
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServingError(f"cannot load model {target.model_uri}: {first}") from None
    resume_full_collections()  # a serving command's start-up ends with its model loaded
    return model


def input_columns(model: Any) -> dict[str, str]:
    """The model's input columns and their kinds (numeric, date, categorical)."""
    return dict(model.unwrap_python_model().predictor.preprocessing.column_types)
