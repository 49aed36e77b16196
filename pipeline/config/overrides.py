"""The command line before Hydra sees it: every override is composed and checked here first, so a
wrong key, a wrong type, an unknown choice or a password on the command line ends in one line
naming it (exit 2) before Hydra writes anything; and the keys the user set explicitly, which win
over tuned values."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
FREE_FORM = ("tune.space",)  # mappings whose keys are the user's (search spaces)
_PASSWORD_IN_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:[^@/\s]+@")
ENVIRONMENT_FOR = {
    "tracking.uri": "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
    "tune.storage": "OPTUNA_STORAGE (or PGPASSWORD, or a ~/.pgpass file)",
}


def key_of(override: str) -> str:
    """`tune.n_trials` of `tune.n_trials=3`, `+train.x=1` or `~model.hidden`."""
    return override.lstrip("+~").split("=", 1)[0]


def explicit_keys(overrides: Iterable[str]) -> set[str]:
    """The config keys the user set on the command line (not Hydra's own settings)."""
    return {key_of(o) for o in overrides if "=" in o and not key_of(o).startswith("hydra")}


def refuse_passwords(overrides: Iterable[str]) -> None:
    """A password on a command line is visible in `ps` and the shell history."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if _PASSWORD_IN_URL.search(value):
            where = ENVIRONMENT_FOR.get(key, "an environment variable the service reads")
            raise ConfigError(
                f"{key} holds a password; leave it out of the command line (it shows in ps and the "
                f"shell history) and give it through {where}"
            )


def compose_checked(overrides: list[str]) -> DictConfig:
    """The config the overrides make, or a ConfigError naming what is wrong and what is valid."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.config.schema import register_schemas

    refuse_passwords(overrides)
    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = composed_or_explained(
                lambda: compose(config_name="config", overrides=list(overrides)), overrides
            )
    finally:
        GlobalHydra.instance().clear()
    check_keys(cfg)
    return cfg


def composed_or_explained(compose: Callable[[], DictConfig], overrides: list[str]) -> DictConfig:
    """What `compose` returns; Hydra's and OmegaConf's errors made one line naming the override."""
    try:
        return compose()
    except Exception as exc:  # noqa: BLE001 - Hydra's and OmegaConf's errors, each made one line
        raise ConfigError(_explain(exc, overrides)) from None


def check_keys(cfg: DictConfig) -> None:
    """A ConfigError for a key added with `+key=value` that no part of the program reads."""
    unknown = _added_keys(cfg)
    if unknown:
        raise ConfigError(_unknown_key(unknown[0]))


def _explain(exc: Exception, overrides: list[str]) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if match := re.search(r"Could not override '([^']+)'", text):
        return _unknown_key(match[1])
    if match := re.search(r"Could not find '([^']+)/([^']+)'", text):
        group, choice = match[1], match[2]
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], re.MULTILINE)
        return f"{group}={choice!r} is not valid; expected one of {', '.join(options)}"
    if match := re.search(r"Error merging override (\S+)", text):
        cause = str(exc.__cause__ or "").strip().splitlines()
        reason = cause[0] if cause else "a value of the wrong type"
        return f"{match[1]} is not valid: {reason}"
    if type(exc).__name__ == "OverrideParseException":
        return f"cannot read the override(s) {' '.join(overrides)}: {first}"
    return first


def _keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        found.append(path)
        if path not in FREE_FORM:
            found += _keys(value, f"{path}.")
    return found


@functools.cache
def _schema_keys() -> frozenset[str]:
    from pipeline.config.schema import PipelineConfig

    schema = OmegaConf.to_container(OmegaConf.structured(PipelineConfig), resolve=False)
    return frozenset(_keys(schema))


def _added_keys(cfg: DictConfig) -> list[str]:
    """Keys added with `+key=value` that no part of the program reads."""
    known = _schema_keys()
    present = _keys(OmegaConf.to_container(cfg, resolve=False))
    return [k for k in present if k not in known and not k.startswith(FREE_FORM)]


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(_schema_keys()), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; see conf/ or `.venv/bin/pipeline --cfg job`"
    return f"{key} is not a config key{hint}"
