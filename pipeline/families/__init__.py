"""Model families that compete for the registry: the network (the `model` group's architecture,
trained by `pipeline.training`) and scikit-learn's gradient boosting, random forest and linear
models. A family is one module here ending with its `FAMILY`, one entry in `FAMILIES` in
`pipeline/config/choices.py`, its settings' dataclass in `FamiliesConfig`
(`pipeline/config/schema.py`), its settings in `conf/family/<name>.yaml` and its search space in
`conf/tune/space/<name>.yaml`, both named in the defaults list of `conf/config.yaml`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# every trial and final fit of any family gets these sections of the config, changed by the
# trial's values (`train.threads` sets the CPU threads of a fit, whatever the family)
SETTINGS_SECTIONS = ["train", "model", "family", "seed"]


@dataclass(frozen=True)
class Family:
    name: str
    # (settings, data, objective, *, epochs, on_step, progress) -> a trained model with
    # best_score, history, fitted(), predictor(prepared), save(dir) and load(dir)
    fit: Callable[..., Any]
    output: type
    title: Callable[[str], str]  # task -> how the verdict names the family
    steps: Callable[[Any], int]  # config -> validation reports per trial (the pruner's resource)
    label: Callable[[Any], str]  # config -> the family's part of a study name
    encoding: Callable[[Any], str] = lambda cfg: "onehot"  # config -> the features it takes


def settings_of(cfg: Any) -> Any:
    """The config sections a family's fit reads and a trial changes."""
    from omegaconf import OmegaConf

    return OmegaConf.masked_copy(cfg, SETTINGS_SECTIONS)


def family(name: str) -> Family:
    from pipeline.config.choices import FAMILIES

    return FAMILIES[name]()


def load_fitted(directory: Any) -> Any:
    """A fitted model saved by a family's `fitted().save(dir)` (or an ensemble's), by the kind it
    recorded."""
    import json
    from pathlib import Path

    from pipeline.ensemble import META_FILE, EnsembleModel

    directory = Path(directory)
    if (directory / META_FILE).is_file():
        return EnsembleModel.load(directory)
    if (directory / "estimator.json").is_file() and json.loads((directory / "estimator.json").read_text())[
        "kind"
    ] == "estimator":
        from pipeline.families.estimator import EstimatorModel

        return EstimatorModel.load(directory)
    from pipeline.families.network import NetworkModel

    return NetworkModel.load(directory)
