"""The checks a schema's types cannot express, run once before any work: a table of per-key rules
(ranges, choices read from `choices.py`) and a few cross-field rules. Each error names the key,
the value and what is valid."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.config import choices
from pipeline.errors import ConfigError

# (key, value) -> the error message, or None when the value is fine
Check = Callable[[str, Any], "str | None"]


def one_of(options: Any) -> Check:
    """`options`: the names, or a function returning them (read when checking)."""

    def check(key: str, value: Any) -> str | None:
        names = tuple(options() if callable(options) else options)
        return None if value in names else f"{key}={value!r} is not valid; expected one of {', '.join(names)}"

    return check


def at_least(minimum: float) -> Check:
    return lambda key, value: (
        None if value >= minimum else f"{key}={value} is out of range; it must be >= {minimum}"
    )


def above(minimum: float) -> Check:
    return lambda key, value: (
        None if value > minimum else f"{key}={value} is out of range; it must be > {minimum}"
    )


def fraction(key: str, value: float) -> str | None:
    if 0.0 < value < 1.0:
        return None
    return f"{key}={value} is out of range; it must be between 0 and 1 (exclusive)"


def share(key: str, value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else f"{key}={value} is out of range; it must be in [0, 1)"


def folds(key: str, value: int) -> str | None:
    if value == 0 or value >= 2:
        return None
    return f"{key}={value} is out of range; it must be 0 (the validation split alone) or >= 2"


def port(key: str, value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"{key}={value} is out of range; it must be 1-65535"


MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def model_name(key: str, value: str) -> str | None:
    if MODEL_NAME.match(value) and ".." not in value:
        return None
    return (
        f"{key}={value!r} is not valid; use letters, digits, '.', '_' and '-' "
        "(at most 128, starting with a letter or digit)"
    )


def optional(check: Check) -> Check:
    return lambda key, value: None if value is None else check(key, value)


def each(check: Check, key_name: str | None = None) -> Check:
    def check_all(key: str, values: Any) -> str | None:
        for value in values:
            if (message := check(key_name or key, value)) is not None:
                return message
        return None

    return check_all


def _metrics() -> tuple[str, ...]:
    from pipeline.metrics import METRICS

    return tuple(METRICS)


def _stages() -> tuple[str, ...]:
    from pipeline.stages import ORDER

    return ORDER


RULES: list[tuple[str, Check]] = [
    ("stages", each(one_of(_stages))),
    ("data.name", one_of(choices.DATASETS)),
    ("data.task", optional(one_of(choices.TASKS))),
    ("data.format", optional(one_of(choices.FORMATS))),
    ("data.split.strategy", optional(one_of(choices.SPLIT_STRATEGIES))),
    ("data.split.val_size", fraction),
    ("data.split.test_size", fraction),
    ("data.min_rows", at_least(3)),
    ("data.categorical_int_max_levels", at_least(0)),
    ("data.rare_level_min_count", at_least(1)),
    ("model.name", one_of(choices.NETWORKS)),
    ("model.activation", one_of(choices.ACTIVATIONS)),
    ("model.norm", one_of(choices.NORMS)),
    ("model.dropout", share),
    ("model.hidden", each(at_least(1), "model.hidden/model.channels entries")),
    ("model.channels", each(at_least(1), "model.hidden/model.channels entries")),
    ("model.members", at_least(1)),
    ("model.numeric_embedding", one_of(choices.NUMERIC_EMBEDDINGS)),
    ("model.d_embedding", at_least(1)),
    ("model.n_frequencies", at_least(1)),
    ("model.frequency_scale", above(0)),
    ("train.epochs", at_least(1)),
    ("train.batch_size", at_least(1)),
    ("train.optimizer", one_of(choices.OPTIMIZERS)),
    ("train.lr", above(0)),
    ("train.weight_decay", at_least(0.0)),
    ("train.schedule", one_of(choices.SCHEDULES)),
    ("train.warmup_epochs", at_least(0)),
    ("train.grad_clip", at_least(0.0)),
    ("train.label_smoothing", share),
    ("train.loss", one_of(choices.REGRESSION_LOSSES)),
    ("train.early_stopping.patience", at_least(1)),
    ("train.early_stopping.min_delta", at_least(0.0)),
    ("train.threads", optional(at_least(1))),
    ("train.device", one_of(choices.DEVICES)),
    ("train.params_from", one_of(choices.PARAMS_FROM)),
    ("train.cv_folds", folds),
    ("train.cv_max_rows", at_least(0)),
    ("tune.n_trials", at_least(1)),
    ("tune.epochs", at_least(1)),
    ("tune.timeout", optional(above(0))),
    ("tune.sampler", one_of(choices.SAMPLERS)),
    ("tune.pruner", one_of(choices.PRUNERS)),
    ("tune.pruner_startup_trials", at_least(0)),
    ("tune.pruner_warmup_epochs", optional(at_least(0))),
    ("tune.pruner_reduction_factor", at_least(2)),
    ("tune.n_jobs", at_least(1)),
    ("tune.heartbeat_seconds", at_least(1)),
    ("candidates", each(one_of(choices.FAMILIES))),
    ("family.hist_gradient_boosting.learning_rate", above(0)),
    ("family.hist_gradient_boosting.max_iter", at_least(1)),
    ("family.hist_gradient_boosting.max_leaf_nodes", at_least(2)),
    ("family.hist_gradient_boosting.min_samples_leaf", at_least(1)),
    ("family.hist_gradient_boosting.l2_regularization", at_least(0.0)),
    ("family.hist_gradient_boosting.max_features", above(0)),
    ("family.hist_gradient_boosting.steps", at_least(1)),
    ("family.random_forest.n_estimators", at_least(1)),
    ("family.random_forest.min_samples_leaf", at_least(1)),
    ("family.random_forest.max_samples", optional(above(0))),
    ("family.random_forest.steps", at_least(1)),
    ("family.linear.C", above(0)),
    ("family.linear.max_iter", at_least(1)),
    ("evaluate.bootstrap", at_least(0)),
    ("evaluate.confidence", fraction),
    ("evaluate.calibration_bins", at_least(2)),
    ("evaluate.ensemble_rounds", at_least(0)),
    ("registry.model_name", optional(model_name)),
    ("registry.min_delta", at_least(0.0)),
    ("serve.port", port),
    ("tracking.system_metrics_interval", above(0)),
    ("tracking.connect_timeout", optional(above(0))),
    ("serve.batch_size", at_least(1)),
    ("serve.max_request_mb", above(0)),
    ("serve.max_rows", at_least(1)),
    ("objective.direction", optional(one_of(choices.DIRECTIONS))),
    ("objective.metric", optional(one_of(_metrics))),
]


def _lists(cfg: DictConfig) -> None:
    for key, names, what in (
        ("stages", _stages(), "stage"),
        ("candidates", tuple(choices.FAMILIES), "family"),
    ):
        values = list(cfg[key])
        if not values:
            raise ConfigError(f"{key}=[] is empty; give at least one of " + ", ".join(names))
        if len(set(values)) != len(values):
            raise ConfigError(f"{key}={values} repeats a {what}; list each at most once")


def _forest_features(cfg: DictConfig) -> None:
    value = cfg.family.random_forest.max_features
    if value in ("sqrt", "log2") or (
        isinstance(value, float | int) and not isinstance(value, bool) and 0 < value <= 1
    ):
        return
    raise ConfigError(
        f"family.random_forest.max_features={value!r} is not valid; expected sqrt, log2 or a share in (0, 1]"
    )


def _data(cfg: DictConfig) -> None:
    data, split = cfg.data, cfg.data.split
    if data.name == "table" and (not data.path or not data.target):
        raise ConfigError("data=table needs data.path=<csv or parquet file> and data.target=<column>")
    if split.val_size + split.test_size >= 0.9:
        raise ConfigError(
            f"data.split.val_size + data.split.test_size = {split.val_size + split.test_size:.2f}"
            " leaves too little for training; keep the sum below 0.9"
        )
    for strategy in ("group", "time"):
        if split.strategy == strategy and not split[strategy]:
            raise ConfigError(f"data.split.strategy={strategy} needs data.split.{strategy}=<column>")


def _model(cfg: DictConfig) -> None:
    if cfg.model.name == "cnn" and not cfg.model.channels:
        raise ConfigError("model=cnn needs at least one entry in model.channels")


def _tracking(cfg: DictConfig) -> None:
    if cfg.tracking.enabled:
        return
    stages = list(cfg.stages)
    if "register" in stages:
        raise ConfigError(
            "stage 'register' needs the MLflow store; drop tracking.enabled=false or "
            "leave register out of stages"
        )
    if "prepare" not in stages:
        raise ConfigError(
            f"stages={stages} read their inputs from the MLflow store; with "
            "tracking.enabled=false include prepare in stages"
        )


def _extremes(dimension: Any) -> list[Any]:
    """The values a trial can set at a dimension's path: every choice, or both bounds."""
    if dimension.type == "categorical":
        return list(dimension.choices)
    if dimension.type == "layers":
        return [[int(dimension.low)], [int(dimension.high)]]
    return [dimension.low, dimension.high]


def _spaces(cfg: DictConfig) -> None:
    """Each space parses, and no trial can set a value of the wrong type or one the key's rule
    refuses (found when the command starts, not in the middle of a search)."""
    from pipeline.tuning.space import parse_space

    rule_of = dict(RULES)
    spaces = OmegaConf.to_container(cfg.tune.space, resolve=True)
    assert isinstance(spaces, dict)
    scratch = _Scratch(cfg)
    for name, space in spaces.items():
        if name not in choices.FAMILIES:
            raise ConfigError(
                f"tune.space.{name} names no model family; expected one of {', '.join(choices.FAMILIES)}"
            )
        for dimension in parse_space(space, cfg, f"tune.space.{name}"):
            for value in _extremes(dimension):
                message = _refused(scratch, dimension, value, rule_of.get(dimension.path))
                if message is not None:
                    raise ConfigError(
                        f"tune.space.{name} entry {dimension.path!r} can draw a value the key "
                        f"refuses: {message}; narrow its choices or bounds"
                    )


TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


class _Scratch:
    """Copies of the config's sections, one each, that values are tried on (a copy per value
    tried took a millisecond each, a thousand times a search space)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self._sections: dict[str, DictConfig] = {}

    def section(self, path: str) -> DictConfig:
        if path not in self._sections:
            self._sections[path] = OmegaConf.select(self.cfg, path).copy()
        return self._sections[path]


def _refused(scratch: _Scratch, dimension: Any, value: Any, check: Check | None) -> str | None:
    """Why the config would refuse `value` at the dimension's path: the key's type, then its rule."""
    from omegaconf.errors import ValidationError

    path, current = dimension.path, OmegaConf.select(scratch.cfg, dimension.path)
    kind = TYPE_NAMES.get(type(current).__name__, "a list" if isinstance(current, ListConfig) else "its type")
    if dimension.type == "float" and type(current) is int:
        return f"{path} is {kind} and type: float draws fractions (use type: int)"
    section, key = path.rsplit(".", 1)
    try:
        OmegaConf.update(scratch.section(section), key, value, merge=False)
    except ValidationError:
        return f"{path}={value!r} is not {kind}"
    return check(path, value) if check is not None else None


CROSS_FIELD_RULES: list[Callable[[DictConfig], None]] = [
    _lists,
    _forest_features,
    _data,
    _model,
    _tracking,
    _spaces,
]


def validate(cfg: DictConfig) -> None:
    """Check everything a schema's types cannot, naming the key, the value and what is valid."""
    for key, check in RULES:
        message = check(key, OmegaConf.select(cfg, key))
        if message is not None:
            raise ConfigError(message)
    for rule in CROSS_FIELD_RULES:
        rule(cfg)
