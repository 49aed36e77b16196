"""The study: where it is stored, what identifies it (name, search space, objective), its sampler
and pruner, and opening it (creating it or joining it) from any worker."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from pipeline.config.choices import PRUNERS, SAMPLERS
from pipeline.errors import ConfigError, PipelineError
from pipeline.metrics import Objective
from pipeline.tuning.space import Dimension, parse_space

PARENT_RUN_ATTR = "mlflow_tune_run_id"


@dataclass
class StudySettings:
    """What a worker process needs to join the study (plain data, so it pickles for spawn)."""

    study_name: str
    storage: str
    direction: str
    sampler: str
    pruner: str
    seed: int
    epochs: int
    heartbeat_seconds: int
    pruner_startup_trials: int
    pruner_warmup_epochs: int | None
    pruner_reduction_factor: int

    @property
    def shared(self) -> bool:
        """A database that workers on other machines may use at the same time."""
        return "://" in self.storage


def storage_location(tune_cfg: DictConfig, store_dir: Path | None) -> str:
    """`tune.storage`, else $OPTUNA_STORAGE, else a journal file next to the local MLflow store
    (or in the working directory)."""
    if tune_cfg.storage:
        return str(tune_cfg.storage)
    if os.environ.get("OPTUNA_STORAGE"):  # keeps credentials out of the command line
        return os.environ["OPTUNA_STORAGE"]
    return str((store_dir or Path.cwd()) / "optuna.journal")


def make_storage(location: str, heartbeat_seconds: int) -> optuna.storages.BaseStorage:
    if "://" in location:
        from pipeline.tuning.liveness import retry_stale_trial

        return optuna.storages.RDBStorage(
            location,
            heartbeat_interval=heartbeat_seconds,
            grace_period=heartbeat_seconds * 3,
            failed_trial_callback=retry_stale_trial,
        )
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    Path(location).parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(location, lock_obj=JournalFileOpenLock(location))
    return optuna.storages.JournalStorage(backend)


def default_study_name(experiment: str, data_name: str, data_digest: str, label: str, digest: str) -> str:
    return f"{experiment}-{data_name}-{data_digest[:8]}-{label}-{digest}"


def search_digest(dimensions: list[Dimension], objective: Objective) -> str:
    """What identifies a search: its dimensions and the objective (metric and direction)."""
    entries: list[dict[str, Any]] = [d.__dict__ for d in dimensions]
    # the objective is hashed in the same form as a dimension, so that studies created before
    # keep their names
    entries.append({**Dimension("", "").__dict__, "path": objective.metric, "type": objective.direction})
    text = json.dumps(entries, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def study_identity(cfg: DictConfig, family: str, objective: Objective) -> tuple[list[Dimension], str]:
    """The family's search space, and the digest that names its study with the objective."""
    space = OmegaConf.to_container(cfg.tune.space[family], resolve=True)
    dimensions = parse_space(space, cfg, f"tune.space.{family}")  # type: ignore[arg-type]
    return dimensions, search_digest(dimensions, objective)


def study_settings(
    cfg: DictConfig, family: str, data_digest: str, objective: Objective, store_dir: Path | None
) -> StudySettings:
    from pipeline.families import family as declared

    tune, kind = cfg.tune, declared(family)
    _, digest = study_identity(cfg, family, objective)
    label = kind.label(cfg)
    return StudySettings(
        study_name=_named(tune.study_name, family, cfg.candidates)
        or default_study_name(cfg.tracking.experiment, cfg.data.name, data_digest, label, digest),
        storage=storage_location(tune, store_dir),
        direction=objective.direction,
        sampler=tune.sampler,
        pruner=tune.pruner,
        seed=int(cfg.seed),
        epochs=kind.steps(cfg),
        heartbeat_seconds=int(tune.heartbeat_seconds),
        pruner_startup_trials=int(tune.pruner_startup_trials),
        pruner_warmup_epochs=tune.pruner_warmup_epochs,
        pruner_reduction_factor=int(tune.pruner_reduction_factor),
    )


def _named(study_name: str | None, family: str, candidates: Any) -> str | None:
    """`tune.study_name` as given for one candidate; with several, one study each: <name>-<family>."""
    if not study_name:
        return None
    return study_name if len(candidates) == 1 else f"{study_name}-{family}"


def open_study(
    cfg: DictConfig,
    family: str,
    data_digest: str,
    objective: Objective,
    store_dir: Path | None,
    worker: int = 0,
) -> tuple[optuna.Study, StudySettings]:
    """Create or load the family's study; refuse one whose search space or objective changed."""
    _, digest = study_identity(cfg, family, objective)
    settings = study_settings(cfg, family, data_digest, objective, store_dir)
    study = load_study(settings, worker)
    recorded = study.user_attrs.get("search_digest")
    if recorded is None:
        study.set_user_attr("search_digest", digest)
        study.set_user_attr("objective", f"{objective.metric}/{objective.direction}")
    elif recorded != digest:
        raise ConfigError(
            f"study {settings.study_name!r} was created with another search space or objective "
            f"({study.user_attrs.get('objective')}); choose a new tune.study_name to start a "
            "new study"
        )
    return study, settings


def load_study(settings: StudySettings, worker: int = 0) -> optuna.Study:
    from pipeline.tracking.provenance import mask

    pruner = PRUNERS[settings.pruner](
        settings.epochs,
        settings.pruner_startup_trials,
        settings.pruner_warmup_epochs,
        settings.pruner_reduction_factor,
    )
    try:
        return optuna.create_study(
            study_name=settings.study_name,
            storage=make_storage(settings.storage, settings.heartbeat_seconds),
            direction=settings.direction,
            sampler=SAMPLERS[settings.sampler](settings.seed + worker),
            pruner=pruner,
            load_if_exists=True,
        )
    except ValueError as exc:
        if "direction" in str(exc).lower():
            raise ConfigError(
                f"study {settings.study_name!r} optimizes in another direction; choose a new tune.study_name"
            ) from None
        raise
    except Exception as exc:
        if "OperationalError" in type(exc).__name__ or "connect" in str(exc).lower():
            raise PipelineError(
                f"cannot open the study storage {mask(settings.storage)}: {str(exc).splitlines()[0]}"
            ) from None
        raise


def trials_frame(study: optuna.Study) -> Any:
    return study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))


def study_figures(study: optuna.Study) -> dict[str, str]:
    """Optuna's plots as standalone HTML pages, which the MLflow UI shows in its artifact view."""
    import logging

    from optuna import visualization as vis

    plots = {
        "optimization_history.html": vis.plot_optimization_history,
        "param_importances.html": vis.plot_param_importances,
        "parallel_coordinate.html": vis.plot_parallel_coordinate,
        "intermediate_values.html": vis.plot_intermediate_values,
    }
    pages = {}
    for name, plot in plots.items():
        try:
            pages[name] = plot(study).to_html(include_plotlyjs="cdn", full_html=True)
        except Exception as exc:  # noqa: BLE001 - e.g. importances need two finished trials
            logging.getLogger(__name__).info("skipped %s: %s", name, exc)
    return pages
