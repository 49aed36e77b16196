"""The search space: config paths mapped to distributions, parsed and checked once, sampled from
an Optuna trial, and applied back onto a copy of the config.

Entries are nested like the config they change (`train: {lr: {type: float, ...}}`) or keyed by a
dotted path (`train.lr: {...}`). Types: float, int (low, high, optional log/step), categorical
(choices) and layers (a conditional entry: `n_layers: {low, high}` and `width: {low, high, log}`
yield a list of per-layer widths, each width only sampled for layers that exist).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError

TYPES = ("float", "int", "categorical", "layers")
TUNABLE_SECTIONS = ("train", "model", "family")  # what a trial applies its values to
_MISSING = object()


@dataclass(frozen=True)
class Dimension:
    path: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    # for type=layers: bounds of the layer count and of each width
    min_layers: int = 1
    max_layers: int = 1


def _flatten(space: dict[str, Any], prefix: str = "", where: str = "tune.space") -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for key, value in space.items():
        path = f"{prefix}{key}"
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where} entry {path!r} is {value!r}; expected a mapping such as "
                "{type: float, low: 0.0001, high: 0.1, log: true}"
            )
        if "type" in value:
            entries[path] = value
        else:
            entries.update(_flatten(value, f"{path}.", where))
    return entries


def _bounds(path: str, spec: dict[str, Any], integer: bool, where: str = "tune.space") -> tuple[float, float]:
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where} entry {path!r} needs both low and high")
    low, high = spec["low"], spec["high"]
    kind = int if integer else (int, float)
    if (
        isinstance(low, bool)
        or isinstance(high, bool)
        or not isinstance(low, kind)
        or not isinstance(high, kind)
    ):
        wanted = "integers" if integer else "numbers"
        raise ConfigError(f"{where} entry {path!r}: low and high must be {wanted}, got {low!r} and {high!r}")
    if low > high:
        raise ConfigError(f"{where} entry {path!r}: low={low} is greater than high={high}")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"{where} entry {path!r}: log=true needs low > 0, got low={low}")
    return low, high


def parse_space(
    space: dict[str, Any] | None, cfg: DictConfig | None = None, where: str = "tune.space"
) -> list[Dimension]:
    """Parse and check a search space; with `cfg`, every path must name an existing key of a
    section a trial changes (train, model, family)."""
    dimensions = []
    for path, spec in _flatten(space or {}, where=where).items():
        kind = spec.get("type")
        if kind not in TYPES:
            raise ConfigError(f"{where} entry {path!r} has type={kind!r}; expected one of {', '.join(TYPES)}")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices", "n_layers", "width"}
        if unknown:
            raise ConfigError(f"{where} entry {path!r} has unknown fields {sorted(unknown)}")
        if cfg is not None and (
            path.split(".")[0] not in TUNABLE_SECTIONS
            or OmegaConf.select(cfg, path, default=_MISSING) is _MISSING
        ):
            raise ConfigError(
                f"{where} entry {path!r} names no tunable config key; use a path such as "
                "train.lr or model.dropout"
            )
        if kind in ("float", "int"):
            low, high = _bounds(path, spec, integer=kind == "int", where=where)
            dimensions.append(
                Dimension(path, kind, low, high, bool(spec.get("log", False)), spec.get("step"))
            )
        elif kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where} entry {path!r} needs a non-empty list of choices")
            dimensions.append(Dimension(path, kind, choices=tuple(choices)))
        else:
            layers, width = spec.get("n_layers"), spec.get("width")
            if not isinstance(layers, dict) or not isinstance(width, dict):
                raise ConfigError(
                    f"{where} entry {path!r} (type layers) needs n_layers: {{low, high}} and "
                    "width: {low, high, log}"
                )
            min_layers, max_layers = _bounds(f"{path}.n_layers", layers, integer=True, where=where)
            low, high = _bounds(f"{path}.width", {**width}, integer=True, where=where)
            if min_layers < 1:
                raise ConfigError(f"{where} entry {path!r}: n_layers.low must be >= 1")
            dimensions.append(
                Dimension(
                    path,
                    kind,
                    low,
                    high,
                    bool(width.get("log", False)),
                    min_layers=int(min_layers),
                    max_layers=int(max_layers),
                )
            )
    return dimensions


def space_digest(dimensions: list[Dimension]) -> str:
    text = json.dumps([d.__dict__ for d in dimensions], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def suggest(trial: Any, dimensions: list[Dimension]) -> dict[str, Any]:
    """Sample one point; returns {config path: value}, with layer lists already assembled."""
    values: dict[str, Any] = {}
    for d in dimensions:
        if d.type == "float":
            values[d.path] = trial.suggest_float(d.path, d.low, d.high, log=d.log, step=d.step)
        elif d.type == "int":
            values[d.path] = trial.suggest_int(
                d.path, int(d.low), int(d.high), log=d.log, step=int(d.step or 1)
            )
        elif d.type == "categorical":
            values[d.path] = trial.suggest_categorical(d.path, list(d.choices))
        else:
            n_layers = trial.suggest_int(f"{d.path}.n_layers", d.min_layers, d.max_layers)
            values[d.path] = [
                trial.suggest_int(f"{d.path}.width_{i}", int(d.low), int(d.high), log=d.log)
                for i in range(n_layers)
            ]
    return values


def configured_point(cfg: DictConfig, dimensions: list[Dimension]) -> dict[str, Any]:
    """The configured values as Optuna params, for a first trial that tries the defaults: each
    dimension whose value lies in the space (the others are left to the sampler)."""
    point: dict[str, Any] = {}
    for d in dimensions:
        value = OmegaConf.select(cfg, d.path)
        if d.type == "layers":
            widths = list(value) if OmegaConf.is_list(value) or isinstance(value, list) else []
            if d.min_layers <= len(widths) <= d.max_layers and all(_within(d, w) for w in widths):
                point[f"{d.path}.n_layers"] = len(widths)
                point.update({f"{d.path}.width_{i}": int(w) for i, w in enumerate(widths)})
        elif d.type == "categorical":
            if value in d.choices:
                point[d.path] = value
        elif _within(d, value):
            point[d.path] = int(value) if d.type == "int" else float(value)
    return point


def _within(d: Dimension, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if d.type == "int" and value != int(value):
        return False
    on_step = d.step is None or abs((value - d.low) / d.step - round((value - d.low) / d.step)) < 1e-9
    return d.low <= value <= d.high and on_step


def values_from_params(params: dict[str, Any], dimensions: list[Dimension]) -> dict[str, Any]:
    """Turn a trial's flat Optuna params back into {config path: value}."""
    values: dict[str, Any] = {}
    for d in dimensions:
        if d.type == "layers":
            n_layers = params.get(f"{d.path}.n_layers")
            if n_layers is not None:
                values[d.path] = [params[f"{d.path}.width_{i}"] for i in range(int(n_layers))]
        elif d.path in params:
            values[d.path] = params[d.path]
    return values


def apply_values(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of `cfg` with each config path set to its value."""
    updated = cfg.copy()
    for path, value in values.items():
        OmegaConf.update(updated, path, value, merge=False)
    return updated
