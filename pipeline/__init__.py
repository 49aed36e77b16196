"""Experiment tracking and hyperparameter search for PyTorch models: prepare, tune, train,
evaluate and register, each stage tracked in MLflow."""

__version__ = "0.1.0"
