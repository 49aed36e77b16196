"""Every named choice of the configuration, one registry each: the name and what it builds.

Validation and its error messages read the valid names from here, and the code that uses a choice
builds it from here, so a choice is added in one place. Factories import their library when
called: validating a config stays fast (no torch, Optuna or scikit-learn import)."""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib import import_module
from typing import Any

TASKS = ("binary", "multiclass", "regression")
DIRECTIONS = ("maximize", "minimize")
FORMATS = ("csv", "parquet")
SPLIT_STRATEGIES = ("random", "stratified", "group", "time")
PARAMS_FROM = ("auto", "config")


def _nn() -> Any:
    from torch import nn

    return nn


def _torch() -> Any:
    import torch

    return torch


def _optuna() -> Any:
    import optuna

    return optuna


# built-in data sets: name -> scikit-learn loader (they ship with the package; no download)
def _sklearn_loader(name: str) -> Callable[[], Any]:
    def load() -> Any:
        from sklearn import datasets

        return getattr(datasets, f"load_{name}")(as_frame=True)

    return load


BUILTIN_DATASETS: dict[str, Callable[[], Any]] = {
    name: _sklearn_loader(name) for name in ("breast_cancer", "digits", "wine", "diabetes")
}
DATASETS = (*BUILTIN_DATASETS, "table")

# networks (the `model` group): name -> module class, built from a NetworkSpec
NETWORKS: dict[str, Callable[[Any], Any]] = {
    "mlp": lambda spec: import_module("pipeline.models").MLP(spec),
    "cnn": lambda spec: import_module("pipeline.models").CNN(spec),
    "tabular": lambda spec: import_module("pipeline.tabular").TabularNet(spec),
}

# numeric embeddings of model=tabular: name -> (NetworkSpec -> module mapping (batch, numbers)
# to (batch, numbers, width), with a `width` attribute)
NUMERIC_EMBEDDINGS: dict[str, Callable[[Any], Any]] = {
    "periodic": lambda spec: import_module("pipeline.tabular").PeriodicEmbeddings(
        spec.n_numeric, spec.n_frequencies, spec.d_embedding, spec.frequency_scale
    ),
    "none": lambda spec: import_module("pipeline.tabular").ScaledNumbers(),
}

ACTIVATIONS: dict[str, Callable[[], Any]] = {
    "relu": lambda: _nn().ReLU(),
    "gelu": lambda: _nn().GELU(),
    "silu": lambda: _nn().SiLU(),
    "tanh": lambda: _nn().Tanh(),
}

# normalization after a hidden layer: name -> (width -> module)
NORMS: dict[str, Callable[[int], Any]] = {
    "none": lambda width: _nn().Identity(),
    "batch": lambda width: _nn().BatchNorm1d(width),
    "layer": lambda width: _nn().LayerNorm(width),
}

# optimizers: name -> (parameters, train config section) -> torch optimizer
OPTIMIZERS: dict[str, Callable[[Any, Any], Any]] = {
    "adam": lambda params, t: _torch().optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay),
    "adamw": lambda params, t: _torch().optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay),
    "sgd": lambda params, t: _torch().optim.SGD(
        params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
    ),
}


def _cosine(epoch: int, epochs: int, warmup: int) -> float:
    progress = (epoch - warmup) / max(1, epochs - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# learning-rate schedules after the warm-up: name -> (epoch, epochs, warmup) -> lr multiplier;
# plateau has no fixed curve: the loop lowers the rate when the objective stalls
SCHEDULES: dict[str, Callable[[int, int, int], float] | None] = {
    "none": lambda epoch, epochs, warmup: 1.0,
    "cosine": _cosine,
    "plateau": None,
}

# regression losses: name -> (outputs, standardized targets) -> loss
REGRESSION_LOSSES: dict[str, Callable[[Any, Any], Any]] = {
    "mse": lambda out, y: _torch().nn.functional.mse_loss(out.squeeze(1), y),
    "huber": lambda out, y: _torch().nn.functional.huber_loss(out.squeeze(1), y),
}

DEVICES = ("auto", "cpu", "cuda", "mps")

# Optuna samplers: name -> seed -> sampler
SAMPLERS: dict[str, Callable[[int], Any]] = {
    "tpe": lambda seed: _optuna().samplers.TPESampler(seed=seed),
    "random": lambda seed: _optuna().samplers.RandomSampler(seed=seed),
    "gp": lambda seed: _optuna().samplers.GPSampler(seed=seed),
}


def _median_pruner(epochs: int, startup: int, warmup: int | None, reduction_factor: int) -> Any:
    if warmup is None:
        warmup = max(1, epochs // 10)  # the first epochs say little about the last
    return _optuna().pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)


# Optuna pruners: name -> (epochs, startup trials, warm-up epochs, reduction factor) -> pruner.
# Both pruners train about half the epochs of no pruning on digits for a best value within
# noise of it (bench/tuning.py).
PRUNERS: dict[str, Callable[[int, int, int | None, int], Any]] = {
    "median": _median_pruner,
    "hyperband": lambda epochs, startup, warmup, factor: _optuna().pruners.HyperbandPruner(
        min_resource=1, max_resource=epochs, reduction_factor=factor
    ),
    "none": lambda epochs, startup, warmup, factor: _optuna().pruners.NopPruner(),
}


# the model families that compete: name -> its declaration (pipeline.families)
FAMILIES: dict[str, Callable[[], Any]] = {
    name: (lambda name=name: import_module(f"pipeline.families.{name}").FAMILY)
    for name in ("network", "hist_gradient_boosting", "random_forest", "linear")
}


def _dummy(task: str) -> Any:
    from sklearn import dummy

    if task == "regression":
        return dummy.DummyRegressor(strategy="mean")
    return dummy.DummyClassifier(strategy="prior")


# the floor every family must clear: name -> (task -> unfitted estimator), and how verdicts name it
FLOORS: dict[str, Callable[[str], Any]] = {"dummy": _dummy}
FLOOR_TITLES = {"classification": "the majority class", "regression": "predicting the mean"}
