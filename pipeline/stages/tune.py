"""Stage tune: an Optuna study over the configured search space. Each trial trains on the training
split and reports the validation objective every epoch (so the pruner can stop it early); one
MLflow run per trial nests under the study's one tune run. The study is persisted, so running
the stage again resumes toward the total `tune.n_trials`; `tune.n_jobs` worker processes (or
workers on other machines, through a database) share it. The machinery lives in `pipeline.tuning`."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from pipeline.config.schema import TuneConfig
from pipeline.console import say
from pipeline.errors import PipelineError
from pipeline.families import family as family_of
from pipeline.families import settings_of
from pipeline.metrics import Objective
from pipeline.stages import Opening, Stage, StageCall
from pipeline.tracking.provenance import mask
from pipeline.tuning.liveness import RUN_ID_ATTR, reap_stale_trials
from pipeline.tuning.objective import TrialContext, census, work
from pipeline.tuning.space import Dimension, values_from_params
from pipeline.tuning.study import (
    PARENT_RUN_ATTR,
    StudySettings,
    open_study,
    study_figures,
    study_settings,
    trials_frame,
)
from pipeline.tuning.workers import WorkerPool, run_workers

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    best_values: dict[str, Any]
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    best_run_id: str | None
    study_name: str
    storage: str
    counts: dict[str, int] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)  # number, state, value of each
    importances: dict[str, float] = field(default_factory=dict)  # Optuna's, by parameter
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)  # PNGs the record drew; never saved

    def describe_trials(self) -> str:
        """'12 trials: 7 complete, 5 pruned'."""
        states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.counts.items()))
        return f"{sum(self.counts.values())} trials: {states}"

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "figures"}
        (directory / "tune.json").write_text(json.dumps(values, indent=2, default=str))

    @classmethod
    def load(cls, directory: Path) -> TuneResult:
        return cls(**json.loads((directory / "tune.json").read_text()))


def summarize(study: optuna.Study, dimensions: list[Dimension], settings: StudySettings) -> TuneResult:
    """The study's best point; an error naming the most common failures when no trial completed."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials if not t.user_attrs.get("surplus"))
    if not any(t.state == TrialState.COMPLETE for t in trials):
        errors = Counter(
            t.user_attrs.get("error", "unknown error")
            for t in trials
            if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")
        )
        summary = "; ".join(f"{n}x {e}" for e, n in errors.most_common(3)) or "no trial completed"
        raise PipelineError(f"tuning failed: no trial completed ({dict(counts)}): {summary}")
    best = study.best_trial
    return TuneResult(
        best_values=values_from_params(best.params, dimensions),
        best_params=dict(best.params),
        best_value=float(best.value),
        best_trial=best.number,
        best_run_id=best.user_attrs.get(RUN_ID_ATTR),
        study_name=settings.study_name,
        storage=mask(settings.storage),
        counts=dict(counts),
        trials=[
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.state == TrialState.COMPLETE else None,
            }
            for t in trials
            if not t.user_attrs.get("surplus")
        ],
        importances=_importances(study),
    )


def _importances(study: optuna.Study) -> dict[str, float]:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception:  # noqa: BLE001 - e.g. fewer than two finished trials, or one parameter
        return {}


def _progress_bar(enabled: bool, n_trials: int) -> tuple[Any, Any]:
    """A tqdm bar over the study's finished trials, and the function that updates it."""
    if not enabled:
        return None, None
    from tqdm.auto import tqdm

    bar = tqdm(total=n_trials, desc="tune", unit="trial", leave=False, dynamic_ncols=True)

    def show(now: Any) -> None:
        bar.n = min(now.done, n_trials)
        bar.set_postfix(running=now.running, failed=now.failed, refresh=False)
        bar.refresh()

    return bar, show


def tune(
    tune_cfg: TuneConfig,
    family: str,
    dimensions: list[Dimension],
    settings_cfg: DictConfig,
    data: Any,
    objective: Objective,
    study: optuna.Study,
    settings: StudySettings,
    trial_runs: Any = None,
    progress: bool = False,
    pool: WorkerPool | None = None,
    meanwhile: Callable[[], None] = lambda: None,
) -> TuneResult:
    """Run the family's study to `tune.n_trials` COMPLETE+PRUNED trials and return the best
    point. `dimensions`: what the trials sample (the family's space less the values the command
    line fixed); `settings_cfg`: the settings each trial changes (pipeline.families.settings_of); with
    `tune.n_jobs` > 1 the extra workers come from `pool` when it has them (already started).
    `meanwhile`: what this process does before its own first trial, once the others have theirs."""
    n_trials, n_jobs = int(tune_cfg.n_trials), int(tune_cfg.n_jobs)
    deadline = time.time() + tune_cfg.timeout if tune_cfg.timeout else None
    # this invocation's trials: the ones it creates and the queued ones it will run (the
    # configured first point, retries of dead trials)
    trials = study.get_trials(deepcopy=False)
    since = min((t.number for t in trials if t.state == TrialState.WAITING), default=len(trials))
    reap_stale_trials(study, settings.heartbeat_seconds)
    if (finished := census(study, since).done) >= n_trials:
        say(
            f"tune {family}: study {settings.study_name!r} already has {finished} finished trials "
            f"(tune.n_trials={n_trials}): nothing to run; ask for more with tune.n_trials={finished + n_trials}"
        )
    ctx = TrialContext(
        family,
        settings_cfg,
        data,
        objective,
        dimensions,
        settings.epochs,
        settings.heartbeat_seconds,
        trial_runs,
        since,
    )
    bar, show = _progress_bar(progress, n_trials)
    try:
        if n_jobs > 1:
            run_workers(
                study, ctx, settings, n_trials, n_jobs, deadline, show or (lambda now: None), pool, meanwhile
            )
        else:
            meanwhile()
        # with workers: finish here what dead workers left undone (their trials were re-queued)
        work(study, ctx, n_trials, deadline, show)
    finally:
        if bar is not None:
            bar.close()
    now = census(study, since)
    if now.done < n_trials and now.failing >= n_trials:
        log.warning("stopped tuning: the last %d trials all failed", now.failing)
    return summarize(study, dimensions, settings)


def open_tune_run(call: StageCall) -> Opening:
    """Open (or join) the family's study, then the study's one tune run: trials of every
    invocation and worker nest under it."""
    prepared, family, inv = call.upstream["prepare"], call.family, call.invocation
    study, settings, identity = open_study(
        call.cfg, family, prepared.digest, inv.objective, inv.store_dir, inv.explicit
    )
    say(f"tune {family}: study {settings.study_name!r} in {mask(settings.storage)}")
    tags = {"study.name": settings.study_name, "study.storage": mask(settings.storage)}
    run_id, existing = call.recorder.claim(
        study.user_attrs.get(PARENT_RUN_ATTR),
        publish=lambda mine: study.set_user_attr(PARENT_RUN_ATTR, mine),
        reread=lambda: study.user_attrs.get(PARENT_RUN_ATTR),
        shared=settings.shared,
        name=f"tune {family}",
        tags={**call.tags, **tags},
        parent_run_id=inv.parent_run_id,
    )
    if existing:
        say(
            f"tune {family}: continuing the study's run {run_id} toward tune.n_trials={call.cfg.tune.n_trials}"
        )
    return Opening(run_id=run_id, tags=tags, state=(study, settings, identity, existing))


def study_tags(cfg: DictConfig, invocation: Any, family: str | None) -> list[dict[str, str]]:
    """A tune run is the right input when it holds this family's study (its space and objective):
    the one with the values this command line fixes, else the whole search (whose tuned values
    the command line's then replace)."""
    assert family is not None
    inv, names = invocation, []
    for explicit in (inv.explicit, frozenset()):
        settings = study_settings(cfg, family, inv.data_digest, inv.objective, inv.store_dir, explicit)
        if settings.study_name not in names:
            names.append(settings.study_name)
    return [{"study.name": name} for name in names]


def run(call: StageCall) -> TuneResult:
    study, settings, identity, existing = call.state
    if existing:
        call.record.log(tags={"resumed": "true"})
    if call.record.run_id is not None:
        study.set_user_attr(PARENT_RUN_ATTR, call.record.run_id)
    return tune(
        call.cfg.tune,
        call.family,
        identity.dimensions,
        settings_of(call.cfg),
        call.upstream["prepare"].training_data(family_of(call.family).encoding(call.cfg)),
        call.invocation.objective,
        study,
        settings,
        call.record.trial_runs(call.family),
        call.invocation.progress,
        call.invocation.pool,
        call.invocation.finish_upstream,  # e.g. save the prepared data while the workers start
    )


def record(run: Any, result: TuneResult, call: StageCall) -> None:
    study, _, identity, _ = call.state
    tune_cfg, metric = call.cfg.tune, call.invocation.objective.metric
    # tags, not params: a resumed study or another worker updates them (params never change)
    run.log(
        metrics={
            f"best_val_{metric}": result.best_value,
            **{f"trials.{k.lower()}": v for k, v in result.counts.items()},
        },
        tags={f"best.{k}": v for k, v in result.best_values.items()}
        | {f"fixed.{k}": v for k, v in identity.fixed.items()}
        | {"best.trial": result.best_trial, "best.run_id": result.best_run_id or ""}
        | {
            f"tune.{key}": tune_cfg[key]
            for key in (
                "n_trials",
                "sampler",
                "pruner",
                "pruner_startup_trials",
                "pruner_warmup_epochs",
                "pruner_reduction_factor",
                "n_jobs",
            )
        },
    )
    run.files({"trials.csv": trials_frame(study).to_csv(index=False)})
    if call.plots:  # kept for the run report, which shows the search again
        result.figures = run.figures(study_figures(study, result.trials, result.importances)) or {}


STAGE = Stage(
    name="tune",
    needs=("prepare",),
    output=TuneResult,
    run=run,
    record=record,
    open=open_tune_run,
    per_family=True,
    system_metrics=True,
    identity=study_tags,
)
