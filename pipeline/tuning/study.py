"""The study: where it is stored, what identifies it (name, search space, objective), its sampler
and pruner, and opening it (creating it or joining it) from any worker."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from pipeline.config.choices import PRUNERS, SAMPLERS
from pipeline.errors import ConfigError, PipelineError
from pipeline.metrics import Objective
from pipeline.tuning.space import Dimension, configured_point, parse_space

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
    connect_timeout: float | None = None  # tracking.connect_timeout: the patience for a database

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


SCHEMA_ATTEMPTS = 5  # processes that open a new database at once: each try lets one more finish


def make_storage(location: str, heartbeat_seconds: int) -> optuna.storages.BaseStorage:
    if "://" in location:
        return _database_storage(location, heartbeat_seconds)
    from optuna.storages.journal import JournalFileBackend

    from pipeline.tuning.journal_lock import JournalFlock

    Path(location).parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(location, lock_obj=JournalFlock(location))
    return optuna.storages.JournalStorage(backend)


def _database_storage(location: str, heartbeat_seconds: int) -> optuna.storages.RDBStorage:
    """Optuna's storage in a database. Opening creates the tables of a new database; workers that
    open it at the same moment race to create them (PostgreSQL refuses the losers: "already
    exists"), and a loser opens it again once the tables are there."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    from pipeline.tuning.liveness import retry_stale_trial

    def opened() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(
            location,
            heartbeat_interval=heartbeat_seconds,
            grace_period=heartbeat_seconds * 3,
            heartbeat_stale_trial_callback=retry_stale_trial,
        )

    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return opened()
        except (IntegrityError, ProgrammingError) as exc:
            if "already exists" not in str(exc):
                raise
        time.sleep(0.1 * attempt)
    return opened()


def default_study_name(experiment: str, data_name: str, data_digest: str, label: str, digest: str) -> str:
    return f"{experiment}-{data_name}-{data_digest[:8]}-{label}-{digest}"


@dataclass(frozen=True)
class SearchIdentity:
    """What makes a study the same search: the dimensions it samples, the values the command line
    fixed instead (they leave the space), and the objective."""

    dimensions: list[Dimension]
    fixed: dict[str, Any]
    objective: str  # metric/direction

    @property
    def digest(self) -> str:
        described = {
            "space": [d.__dict__ for d in self.dimensions],
            "fixed": self.fixed,
            "objective": self.objective,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:12]


def study_identity(
    cfg: DictConfig, family: str, objective: Objective, explicit: frozenset[str] = frozenset()
) -> SearchIdentity:
    """The family's search: its space less the dimensions the command line fixed."""
    space = OmegaConf.to_container(cfg.tune.space[family], resolve=True)
    dimensions = parse_space(space, cfg, f"tune.space.{family}")  # type: ignore[arg-type]
    fixed = {d.path: OmegaConf.select(cfg, d.path) for d in dimensions if d.path in explicit}
    fixed = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in fixed.items()}
    return SearchIdentity(
        [d for d in dimensions if d.path not in fixed], fixed, f"{objective.metric}/{objective.direction}"
    )


def study_settings(
    cfg: DictConfig,
    family: str,
    data_digest: str,
    objective: Objective,
    store_dir: Path | None,
    explicit: frozenset[str] = frozenset(),
) -> StudySettings:
    from pipeline.families import family as declared

    tune, kind = cfg.tune, declared(family)
    digest = study_identity(cfg, family, objective, explicit).digest
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
        connect_timeout=cfg.tracking.get("connect_timeout"),
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
    explicit: frozenset[str] = frozenset(),
) -> tuple[optuna.Study, StudySettings, SearchIdentity]:
    """Create or join the family's study; refuse one whose space, fixed values or objective differ."""
    identity = study_identity(cfg, family, objective, explicit)
    settings = study_settings(cfg, family, data_digest, objective, store_dir, explicit)
    study = load_study(settings)
    recorded = study.user_attrs.get("search_digest")
    if recorded is None:
        study.set_user_attr("objective", identity.objective)
        study.set_user_attr("fixed", identity.fixed)
        point = configured_point(cfg, identity.dimensions)
        if cfg.tune.start_from_config and point and not study.get_trials(deepcopy=False):
            # the defaults are the point a user would try by hand; skip_if_exists keeps two
            # commands that open the new study together from trying it twice
            study.enqueue_trial(point, skip_if_exists=True)
        # last: a study whose setting-up was interrupted is set up again by the next run
        study.set_user_attr("search_digest", identity.digest)
    elif recorded != identity.digest:
        fixed = study.user_attrs.get("fixed")
        if fixed is not None and fixed != identity.fixed:
            raise ConfigError(
                f"study {settings.study_name!r} fixes {_fixed_text(fixed)} and this run fixes "
                f"{_fixed_text(identity.fixed)}; use the same values, or a new tune.study_name"
            )
        raise ConfigError(
            f"study {settings.study_name!r} was created with another search space or objective "
            f"({study.user_attrs.get('objective')}); choose a new tune.study_name to start a "
            "new study"
        )
    return study, settings, identity


def _fixed_text(fixed: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(fixed.items())) or "nothing"


def sampler_seed(seed: int, worker: int, trials_so_far: int) -> int:
    """The sampler's seed for a worker joining a study that holds `trials_so_far` trials: the same
    seed and study state give the same points, and a resumed or joined study draws new ones
    (a sampler seeded alike on every resume would repeat its first points)."""
    return (seed * 1_000_003 + worker * 7_919 + trials_so_far) % 2**31


def load_study(settings: StudySettings, worker: int = 0) -> optuna.Study:
    from pipeline.tracking.provenance import mask

    probe_storage(settings)
    pruner = PRUNERS[settings.pruner](
        settings.epochs,
        settings.pruner_startup_trials,
        settings.pruner_warmup_epochs,
        settings.pruner_reduction_factor,
    )
    try:
        study = optuna.create_study(
            study_name=settings.study_name,
            storage=make_storage(settings.storage, settings.heartbeat_seconds),
            direction=settings.direction,
            pruner=pruner,
            load_if_exists=True,
        )
        trials_so_far = len(study.get_trials(deepcopy=False))
        study.sampler = SAMPLERS[settings.sampler](sampler_seed(settings.seed, worker, trials_so_far))
        return study
    except ValueError as exc:
        if "direction" in str(exc).lower():
            raise ConfigError(
                f"study {settings.study_name!r} optimizes in another direction; choose a new tune.study_name"
            ) from None
        raise
    except Exception as exc:
        if "OperationalError" in type(exc).__name__ or "connect" in str(exc).lower():
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(
                f"cannot open the study storage {mask(settings.storage)}: {mask(first)[:300]}; "
                f"check {STORAGE_KEYS}"
            ) from None
        raise


STORAGE_KEYS = "tune.storage (or $OPTUNA_STORAGE)"


def probe_storage(settings: StudySettings) -> None:
    """Reach a study database within tracking.connect_timeout before the study is opened: a
    database that does not answer would otherwise hold the command for minutes."""
    from pipeline.tracking.store import probe

    if settings.shared:
        probe(settings.storage, settings.connect_timeout, "the study storage", STORAGE_KEYS, "start it")


def trials_frame(study: optuna.Study) -> Any:
    return study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))


def study_figures(
    study: optuna.Study, trials: list[dict[str, Any]], importances: dict[str, float]
) -> dict[str, Any]:
    """The search as PNG figures (they render offline in the MLflow UI, where plotly's HTML pages
    would load plotly from its CDN); the importances are the ones the tune stage computed."""
    from optuna.trial import TrialState

    from pipeline import plots

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    figures = {"optimization_history.png": plots.search_history(trials, study.direction.name == "MAXIMIZE")}
    if importances:
        figures["param_importances.png"] = plots.param_importances(importances)
    curves = {t.number: t.intermediate_values for t in finished if t.intermediate_values}
    if curves:
        pruned = {t.number for t in finished if t.state == TrialState.PRUNED}
        figures["intermediate_values.png"] = plots.intermediate_values(curves, pruned)
    return figures
