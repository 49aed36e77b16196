"""The configuration's typed schema: one dataclass per config group, registered in Hydra's
ConfigStore as the base of `conf/config.yaml`, so a wrong type or an unknown key is refused when
the config is composed. The checks types cannot express live in `validate.py`."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


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
    # model=tabular: numeric embeddings and an efficient ensemble
    members: int = 8  # networks sharing one MLP; the prediction is their mean
    numeric_embedding: str = "periodic"  # periodic, or none: the scaled numbers as they are
    d_embedding: int = 16  # width of each number's embedding
    n_frequencies: int = 16  # periodic features per number
    frequency_scale: float = 0.05  # spread of the initial frequencies


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
    threads: int | None = None  # None: 1 below 20,000 training rows, else torch's default
    device: str = "auto"
    compile: bool = False
    params_from: str = "auto"  # auto: the tune run when there is one; config: never
    refit: bool = True  # fit the final model again on train and val rows, for its best epoch count
    cv_folds: int = 5  # out-of-fold predictions that choose the winner; 0: the validation split
    cv_max_rows: int = 20000  # above this many train and val rows, the validation split chooses


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
    start_from_config: bool = True  # a new study's first trial tries the configured values
    space: dict[str, Any] = field(default_factory=dict)  # family -> its search space


@dataclass
class EvaluateConfig:
    bootstrap: int = 1000
    confidence: float = 0.95
    calibration_bins: int = 10
    ensemble_rounds: int = 25


@dataclass
class HistGradientBoostingConfig:
    learning_rate: float = 0.1
    max_iter: int = 200
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    max_features: float = 1.0
    steps: int = 10  # validation reports while the iterations grow (where a trial can be pruned)


@dataclass
class RandomForestConfig:
    n_estimators: int = 200
    max_features: Any = "sqrt"  # sqrt, log2, or a share of the features
    min_samples_leaf: int = 1
    extra_trees: bool = False
    max_samples: float | None = None  # None: bootstrap samples as large as the training split
    steps: int = 5  # validation reports while the trees are added


@dataclass
class LinearConfig:
    C: float = 1.0  # inverse regularization strength (ridge regression's alpha is 1/C)
    max_iter: int = 1000


@dataclass
class FamiliesConfig:
    hist_gradient_boosting: HistGradientBoostingConfig = field(default_factory=HistGradientBoostingConfig)
    random_forest: RandomForestConfig = field(default_factory=RandomForestConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)


@dataclass
class RegistryConfig:
    model_name: str | None = None  # None: the data set's name (a table's file stem)
    min_score: float | None = None
    min_delta: float = 0.0
    force: bool = False


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: str = "pipeline"
    ui_url: str = "http://127.0.0.1:5000"
    credentials: str | None = (
        None  # an env file (KEY=value lines, mode 0600) of passwords, e.g. make server's
    )
    system_metrics: bool = True  # CPU, memory (and GPU) on train and tune runs
    system_metrics_interval: float = 0.5  # seconds; a run shorter than this logs no sample
    connect_timeout: float | None = (
        10.0  # seconds to reach the store before giving up; None: MLflow's patience
    )
    report: bool = True  # report.html on the pipeline run
    plots: bool = True  # the stages' PNG figures (and the report's); false skips drawing them


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 5001
    model_uri: str | None = None  # None: models:/<registry.model_name>@champion
    batch_size: int = 10_000
    max_request_mb: float = 20.0  # larger request bodies get 413
    max_rows: int = 100_000  # requests with more rows get 413


@dataclass
class PrepareConfig:
    force: bool = False


@dataclass
class ObjectiveConfig:
    metric: str | None = None  # None: roc_auc (binary), log_loss (multiclass), rmse (regression)
    direction: str | None = None  # None: the metric's natural direction


@dataclass
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    family: FamiliesConfig = field(default_factory=FamiliesConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    stages: list[str] = field(default_factory=lambda: ["prepare", "tune", "train", "evaluate", "register"])
    candidates: list[str] = field(
        default_factory=lambda: ["network", "hist_gradient_boosting", "random_forest", "linear"]
    )
    seed: int = 42
    from_run: str | None = None
    progress: bool | None = None  # None: progress bars when stderr is a terminal


@functools.cache  # once a process: storing converts the dataclasses again (30 ms a call)
def register_schemas() -> None:
    """Make the schema the base of `conf/config.yaml` (its defaults list names `pipeline_schema`)."""
    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)
