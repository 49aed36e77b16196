"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore, and the checks
that a type alone cannot express (ranges, choices, cross-field rules), run before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError

STAGES = ("prepare", "tune", "train", "evaluate", "register")
BUILTIN_DATASETS = ("breast_cancer", "digits", "wine", "diabetes")
DATASETS = (*BUILTIN_DATASETS, "table")
TASKS = ("binary", "multiclass", "regression")
MODELS = ("mlp", "cnn")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
NORMS = ("none", "batch", "layer")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "plateau")
REGRESSION_LOSSES = ("mse", "huber")
DEVICES = ("auto", "cpu", "cuda", "mps")
SPLIT_STRATEGIES = ("random", "stratified", "group", "time")
SAMPLERS = ("tpe", "random", "gp")
PRUNERS = ("median", "hyperband", "none")
BASELINES = ("dummy", "linear", "random_forest", "hist_gradient_boosting")
DIRECTIONS = ("maximize", "minimize")


@dataclass
class SplitConfig:
    strategy: str | None = None  # None: stratified for classification, random for regression
    val_size: float = 0.15
    test_size: float = 0.15
    group: str | None = None
    time: str | None = None


@dataclass
class DataConfig:
    name: str = "breast_cancer"
    path: str | None = None
    target: str | None = None
    task: str | None = None  # None: inferred from the target
    format: str | None = None  # csv or parquet; None: from the file extension
    delimiter: str | None = None  # None: sniffed
    encoding: str | None = None  # None: utf-8, then latin-1
    drop: list[str] = field(default_factory=list)
    categorical_int_max_levels: int = 0  # integers with at most this many levels are categorical
    rare_level_min_count: int = 10
    one_hot_sparse_above: int = 200  # one-hot output wider than this stays sparse
    min_rows: int = 20
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class AugmentConfig:
    enabled: bool = True
    max_shift: int = 1
    max_rotation_degrees: float = 10.0
    noise_std: float = 0.05


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    activation: str = "relu"
    dropout: float = 0.1
    norm: str = "none"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class EarlyStoppingConfig:
    patience: int = 10
    min_delta: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 0
    grad_clip: float = 1.0  # 0 disables clipping
    class_weights: bool = False
    label_smoothing: float = 0.0
    loss: str = "mse"  # regression only
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    threads: int | None = None  # None: torch's default
    device: str = "auto"
    compile: bool = False
    params_from: str = "auto"  # auto: the tune run when there is one; config: never


@dataclass
class TuneConfig:
    n_trials: int = 12
    timeout: float | None = None
    epochs: int = 30  # epoch budget of one trial
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_startup_trials: int = 2  # median: trials that finish before any is pruned
    pruner_warmup_epochs: int | None = None  # median: None: epochs // 10 (at least 1)
    pruner_reduction_factor: int = 4  # hyperband: each rung keeps 1 in this many trials
    n_jobs: int = 1
    storage: str | None = None  # None: a journal file next to the MLflow store
    study_name: str | None = None
    heartbeat_seconds: int = 10
    space: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateConfig:
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    bootstrap: int = 1000
    confidence: float = 0.95
    forest_max_rows: int = 50_000
    calibration_bins: int = 10


@dataclass
class RegistryConfig:
    model_name: str | None = None  # None: <data>-<model>
    min_score: float | None = None
    min_delta: float = 0.0
    force: bool = False


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: str = "pipeline"
    ui_url: str = "http://127.0.0.1:5000"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 5001
    model_uri: str | None = None  # None: models:/<registry.model_name>@champion
    batch_size: int = 10_000


@dataclass
class PrepareConfig:
    force: bool = False


@dataclass
class ObjectiveConfig:
    metric: str | None = None  # None: accuracy for classification, rmse for regression
    direction: str | None = None  # None: the metric's natural direction


@dataclass
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    seed: int = 42
    from_run: str | None = None


def register_schemas() -> None:
    """Make the schema the base of `conf/config.yaml` (its defaults list names `pipeline_schema`)."""
    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)


def _choice(value: Any, options: tuple[str, ...], key: str) -> None:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not valid; expected one of {', '.join(options)}")


def _at_least(value: float, minimum: float, key: str) -> None:
    if value < minimum:
        raise ConfigError(f"{key}={value} is out of range; it must be >= {minimum}")


def _fraction(value: float, key: str) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{key}={value} is out of range; it must be between 0 and 1 (exclusive)")


def validate(cfg: DictConfig) -> None:
    """Check everything a schema's types cannot, naming the key, the value and what is valid."""
    stages = list(cfg.stages)
    if not stages:
        raise ConfigError("stages=[] is empty; give at least one of " + ", ".join(STAGES))
    for stage in stages:
        _choice(stage, STAGES, "stages")
    if len(set(stages)) != len(stages):
        raise ConfigError(f"stages={stages} repeats a stage; list each at most once")

    data = cfg.data
    _choice(data.name, DATASETS, "data.name")
    if data.task is not None:
        _choice(data.task, TASKS, "data.task")
    if data.name == "table" and (not data.path or not data.target):
        raise ConfigError("data=table needs data.path=<csv or parquet file> and data.target=<column>")
    if data.format is not None:
        _choice(data.format, ("csv", "parquet"), "data.format")
    split = data.split
    if split.strategy is not None:
        _choice(split.strategy, SPLIT_STRATEGIES, "data.split.strategy")
    _fraction(split.val_size, "data.split.val_size")
    _fraction(split.test_size, "data.split.test_size")
    if split.val_size + split.test_size >= 0.9:
        raise ConfigError(
            f"data.split.val_size + data.split.test_size = {split.val_size + split.test_size:.2f}"
            " leaves too little for training; keep the sum below 0.9"
        )
    if split.strategy == "group" and not split.group:
        raise ConfigError("data.split.strategy=group needs data.split.group=<column>")
    if split.strategy == "time" and not split.time:
        raise ConfigError("data.split.strategy=time needs data.split.time=<column>")
    _at_least(data.min_rows, 3, "data.min_rows")
    _at_least(data.categorical_int_max_levels, 0, "data.categorical_int_max_levels")
    _at_least(data.rare_level_min_count, 1, "data.rare_level_min_count")

    model = cfg.model
    _choice(model.name, MODELS, "model.name")
    _choice(model.activation, ACTIVATIONS, "model.activation")
    _choice(model.norm, NORMS, "model.norm")
    if not 0.0 <= model.dropout < 1.0:
        raise ConfigError(f"model.dropout={model.dropout} is out of range; it must be in [0, 1)")
    for width in list(model.hidden) + list(model.channels):
        _at_least(width, 1, "model.hidden/model.channels entries")
    if model.name == "cnn" and not model.channels:
        raise ConfigError("model=cnn needs at least one entry in model.channels")

    train = cfg.train
    _at_least(train.epochs, 1, "train.epochs")
    _at_least(train.batch_size, 1, "train.batch_size")
    _choice(train.optimizer, OPTIMIZERS, "train.optimizer")
    if train.lr <= 0:
        raise ConfigError(f"train.lr={train.lr} is out of range; it must be > 0")
    _at_least(train.weight_decay, 0.0, "train.weight_decay")
    _choice(train.schedule, SCHEDULES, "train.schedule")
    _at_least(train.warmup_epochs, 0, "train.warmup_epochs")
    _at_least(train.grad_clip, 0.0, "train.grad_clip")
    if not 0.0 <= train.label_smoothing < 1.0:
        raise ConfigError(
            f"train.label_smoothing={train.label_smoothing} is out of range; it must be in [0, 1)"
        )
    _choice(train.loss, REGRESSION_LOSSES, "train.loss")
    _at_least(train.early_stopping.patience, 1, "train.early_stopping.patience")
    _at_least(train.early_stopping.min_delta, 0.0, "train.early_stopping.min_delta")
    if train.threads is not None:
        _at_least(train.threads, 1, "train.threads")
    _choice(train.device, DEVICES, "train.device")
    _choice(train.params_from, ("auto", "config"), "train.params_from")

    tune = cfg.tune
    _at_least(tune.n_trials, 1, "tune.n_trials")
    _at_least(tune.epochs, 1, "tune.epochs")
    if tune.timeout is not None and tune.timeout <= 0:
        raise ConfigError(f"tune.timeout={tune.timeout} is out of range; it must be > 0")
    _choice(tune.sampler, SAMPLERS, "tune.sampler")
    _choice(tune.pruner, PRUNERS, "tune.pruner")
    _at_least(tune.pruner_startup_trials, 0, "tune.pruner_startup_trials")
    if tune.pruner_warmup_epochs is not None:
        _at_least(tune.pruner_warmup_epochs, 0, "tune.pruner_warmup_epochs")
    _at_least(tune.pruner_reduction_factor, 2, "tune.pruner_reduction_factor")
    _at_least(tune.n_jobs, 1, "tune.n_jobs")
    _at_least(tune.heartbeat_seconds, 1, "tune.heartbeat_seconds")

    evaluate = cfg.evaluate
    for name in evaluate.baselines:
        _choice(name, BASELINES, "evaluate.baselines")
    _at_least(evaluate.bootstrap, 0, "evaluate.bootstrap")
    _fraction(evaluate.confidence, "evaluate.confidence")
    _at_least(evaluate.forest_max_rows, 100, "evaluate.forest_max_rows")
    _at_least(evaluate.calibration_bins, 2, "evaluate.calibration_bins")

    _at_least(cfg.registry.min_delta, 0.0, "registry.min_delta")
    if not 1 <= cfg.serve.port <= 65535:
        raise ConfigError(f"serve.port={cfg.serve.port} is out of range; it must be 1-65535")
    _at_least(cfg.serve.batch_size, 1, "serve.batch_size")

    if cfg.objective.direction is not None:
        _choice(cfg.objective.direction, DIRECTIONS, "objective.direction")
    if cfg.objective.metric is not None:
        from pipeline.metrics import METRICS

        _choice(cfg.objective.metric, tuple(METRICS), "objective.metric")

    if not cfg.tracking.enabled:
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

    from pipeline.search_space import parse_space

    parse_space(OmegaConf.to_container(tune.space, resolve=True), cfg)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
