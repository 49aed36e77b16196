"""Runs the chosen stages in order. Stages are plain functions; this module wraps each in its
MLflow run (one parent run per invocation, one child per stage), finds the upstream runs a stage
run alone needs, and saves every stage's output the same way whether stages run together or not."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline import tracking
from pipeline.config import STAGES, validate
from pipeline.errors import UpstreamMissing
from pipeline.metrics import Objective, resolve_objective
from pipeline.stages.evaluate import Evaluation, comparison_markdown, evaluate
from pipeline.stages.prepare import PreparedData, prepare, prepared_digest, read_source
from pipeline.stages.register import Decision, register
from pipeline.stages.train import TrainedModel, train
from pipeline.stages.tune import (
    TuneResult,
    WorkerPool,
    open_study,
    start_workers,
    study_figures,
    trials_frame,
    tune,
)

log = logging.getLogger(__name__)
OUTPUT_TYPES = {
    "prepare": PreparedData,
    "tune": TuneResult,
    "train": TrainedModel,
    "evaluate": Evaluation,
    "register": Decision,
}


@dataclass
class PipelineResult:
    """What a run produced, for the summary and for tests."""

    stages: list[str]
    objective: Objective
    outputs: dict[str, Any] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)
    upstream_used: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    experiment_id: str | None = None
    link: str | None = None
    seconds: float = 0.0


def say(message: str) -> None:
    """A line for the person at the terminal (logs go to the log file)."""
    print(message, flush=True)
    log.info(message)


def config_digest(cfg: DictConfig) -> str:
    from pipeline.data import config_digest as digest

    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    for key in ("stages", "from_run", "tracking", "serve"):
        plain.pop(key, None)
    return digest(plain)


class _Context:
    """State shared by the stage wrappers of one invocation."""

    def __init__(
        self,
        cfg: DictConfig,
        result: PipelineResult,
        data_digest: str,
        config_digest: str,
        store_dir: Path | None,
        progress: bool,
    ):
        self.cfg, self.result, self.data_digest = cfg, result, data_digest
        self.config_digest, self.store_dir, self.progress = config_digest, store_dir, progress
        self.tracking = bool(cfg.tracking.enabled)
        self.table: Any = None  # the source table, read once
        self.inspected: Any = None  # (frame, inspection) of the source table, checked once
        self.git: dict[str, str] = {}
        self.pool: WorkerPool | None = None  # tuning workers started early (tune.n_jobs > 1)

    def filters(self, stage: str) -> dict[str, str]:
        found = {"data.digest": self.data_digest}
        if stage != "prepare":
            found["model.name"] = self.cfg.model.name
        return found

    def upstream(self, stage: str, required: bool = True) -> Any:
        """The output of `stage`: from this invocation, from `from_run`, or the newest matching run."""
        if stage in self.result.outputs:
            return self.result.outputs[stage]
        if not self.tracking:
            return None
        run = None
        if self.cfg.from_run:
            try:
                run = tracking.resolve_from_run(self.cfg.from_run, stage)
            except UpstreamMissing:
                if required:
                    raise
        if run is None:
            run = tracking.find_stage_run(self.result.experiment_id, stage, self.filters(stage))
        if run is None:
            if not required:
                return None
            raise UpstreamMissing(
                f"no finished '{stage}' run for data {self.cfg.data.name} (digest {self.data_digest[:8]}) "
                f"and model {self.cfg.model.name} in experiment {self.cfg.tracking.experiment!r}; "
                f"run stage {stage} first (make {stage}) or give from_run=<run id>"
            )
        source = run.data.tags.get("reused.run", run.info.run_id)
        say(
            f"{stage}: using run {run.info.run_id} ({run.info.run_name}, {time.strftime('%Y-%m-%d %H:%M', time.localtime(run.info.start_time / 1000))})"
        )
        output = tracking.load_outputs(source, OUTPUT_TYPES[stage])
        self.result.outputs[stage] = output
        self.result.run_ids[stage] = run.info.run_id
        self.result.upstream_used[stage] = run.info.run_id
        return output

    def stage_tags(self, stage: str, upstream: list[str]) -> dict[str, str]:
        tags = {
            "stage": stage,
            "data.digest": self.data_digest,
            "data.name": self.cfg.data.name,
            "model.name": self.cfg.model.name,
            "config.digest": self.config_digest,
        }
        tags.update({f"upstream.{s}": self.result.run_ids[s] for s in upstream if s in self.result.run_ids})
        return tags


def _run_prepare(ctx: _Context) -> None:
    table = ctx.table
    cfg = ctx.cfg
    if not ctx.tracking:
        ctx.result.outputs["prepare"] = prepare(cfg, table, ctx.inspected)
        return
    import mlflow

    cached = (
        None
        if cfg.prepare.force
        else tracking.find_stage_run(ctx.result.experiment_id, "prepare", ctx.filters("prepare"))
    )
    with tracking.run_scope(
        "prepare", ctx.result.experiment_id, ctx.stage_tags("prepare", []), nested=True
    ) as run:
        run_id = run.info.run_id
        if cached is not None:
            source = cached.data.tags.get("reused.run", cached.info.run_id)
            prepared = tracking.load_outputs(source, PreparedData)
            mlflow.set_tags({"reused.run": source, "prepare.cache": "hit"})
            say(f"prepare: reusing run {source} (same data and settings; prepare.force=true recomputes)")
        else:
            prepared = prepare(cfg, table, ctx.inspected)
            tracking.save_outputs(run_id, prepared)
            frame = prepared.frames["train"]
            frame[prepared.target] = prepared.preprocessing.decode(prepared.targets["train"])
            mlflow.log_input(
                mlflow.data.from_pandas(
                    frame,
                    source=str(table.source) if cfg.data.name == "table" else None,
                    targets=prepared.target,
                    name=cfg.data.name,
                    digest=prepared.source_digest[:32],
                ),
                context="training",
            )
        card = prepared.card
        tracking.log_values(
            run_id,
            params={
                "data.task": prepared.task,
                "data.split_strategy": card["split_strategy"],
                **{f"data.rows.{k}": v for k, v in card["split_sizes"].items()},
            },
            metrics={
                "data.warnings": card["warning_count"],
                "data.features": prepared.features["train"].shape[1],
            },
            tags={
                "data.source_digest": prepared.source_digest,
                **{f"data.split_digest.{k}": v for k, v in prepared.split_digests.items()},
            },
        )
    ctx.result.outputs["prepare"] = prepared
    ctx.result.run_ids["prepare"] = source if cached is not None else run_id
    for warning in prepared.card["warnings"]:
        say(f"warning: {warning}")


def _claim_tune_run(ctx: _Context, study: Any, settings: Any, tags: dict[str, str]) -> tuple[str, bool]:
    """The study's one tune run (trials of every invocation and worker nest under it): the one the
    study records, or a new one. Workers that start at once on a new shared study each create
    one; after a pause all keep the one recorded last and the others delete theirs."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.stages.tune import PARENT_RUN_ATTR

    client = MlflowClient()
    recorded = study.user_attrs.get(PARENT_RUN_ATTR)
    if recorded:
        try:
            client.get_run(recorded)
            return recorded, True
        except mlflow.exceptions.MlflowException:
            pass  # the study outlived its run (another store): start a new one
    mine = client.create_run(
        ctx.result.experiment_id,
        run_name="tune",
        tags={**tags, "mlflow.parentRunId": ctx.result.parent_run_id},
    ).info.run_id
    study.set_user_attr(PARENT_RUN_ATTR, mine)
    if "://" in settings.storage:  # a shared database: other machines may be claiming right now
        time.sleep(2.0)
        winner = study.user_attrs.get(PARENT_RUN_ATTR)
        if winner != mine:
            client.delete_run(mine)
            return winner, True
    return mine, False


def _run_tune(ctx: _Context) -> None:
    cfg = ctx.cfg
    prepared: PreparedData = ctx.upstream("prepare")
    objective = ctx.result.objective
    study, settings = open_study(cfg, prepared.digest, objective, ctx.store_dir)
    say(f"tune: study {settings.study_name!r} in {tracking.mask(settings.storage)}")
    if not ctx.tracking:
        ctx.result.outputs["tune"] = tune(
            cfg, prepared.training_data(), objective, study, settings, progress=ctx.progress, pool=ctx.pool
        )
        return
    import mlflow

    tags = ctx.stage_tags("tune", ["prepare"])
    tags.update({"study.name": settings.study_name, "study.storage": tracking.mask(settings.storage)})
    run_id, existing = _claim_tune_run(ctx, study, settings, tags)
    with tracking.run_scope("tune", ctx.result.experiment_id, run_id=run_id, nested=True):
        if existing:
            say(f"tune: continuing the study's run {run_id} toward tune.n_trials={cfg.tune.n_trials}")
            mlflow.set_tag("resumed", "true")
        result = tune(
            cfg,
            prepared.training_data(),
            objective,
            study,
            settings,
            ctx.result.experiment_id,
            run_id,
            progress=ctx.progress,
            pool=ctx.pool,
        )
        tracking.save_outputs(run_id, result)
        # tags, not params: a resumed study or another worker updates them (params never change)
        tracking.log_values(
            run_id,
            metrics={
                f"best_val_{objective.metric}": result.best_value,
                **{f"trials.{k.lower()}": v for k, v in result.counts.items()},
            },
            tags={f"best.{k}": v for k, v in result.best_values.items()}
            | {
                "best.trial": result.best_trial,
                "best.run_id": result.best_run_id or "",
                "tune.n_trials": cfg.tune.n_trials,
                "tune.sampler": cfg.tune.sampler,
                "tune.pruner": cfg.tune.pruner,
                "tune.pruner_startup_trials": cfg.tune.pruner_startup_trials,
                "tune.pruner_warmup_epochs": cfg.tune.pruner_warmup_epochs,
                "tune.pruner_reduction_factor": cfg.tune.pruner_reduction_factor,
                "tune.n_jobs": cfg.tune.n_jobs,
            },
        )
        files = {"trials.csv": trials_frame(study).to_csv(index=False)}
        files.update({f"plots/{k}": v for k, v in study_figures(study).items()})
        tracking.log_files(run_id, files)
    ctx.result.outputs["tune"] = result
    ctx.result.run_ids["tune"] = run_id


def _run_train(ctx: _Context) -> None:
    cfg = ctx.cfg
    prepared: PreparedData = ctx.upstream("prepare")
    tuned = None if cfg.train.params_from == "config" else ctx.upstream("tune", required=False)
    objective = ctx.result.objective
    if not ctx.tracking:
        ctx.result.outputs["train"] = train(cfg, prepared, objective, tuned, progress=ctx.progress)
        return
    import mlflow

    from pipeline import plots
    from pipeline.packaging import log_model

    with tracking.run_scope(
        "train",
        ctx.result.experiment_id,
        ctx.stage_tags("train", ["prepare", "tune"] if tuned else ["prepare"]),
        nested=True,
    ) as run:
        run_id = run.info.run_id
        buffer = tracking.MetricBuffer(run_id)
        try:
            trained = train(cfg, prepared, objective, tuned, on_epoch=buffer.add, progress=ctx.progress)
        finally:
            buffer.flush()  # every epoch's metrics are in the store before the run ends
        network = trained.network()
        resolved = OmegaConf.to_container(cfg.train, resolve=True)
        assert isinstance(resolved, dict)
        params = tracking.flatten(
            {"train": resolved, "model": OmegaConf.to_container(cfg.model, resolve=True)}
        )
        params.update({k: v for k, v in trained.applied_values.items()})  # tuned values win
        tracking.log_values(
            run_id,
            params=params,
            metrics={
                "parameter_count": sum(p.numel() for p in network.parameters()),
                f"best_val_{objective.metric}": trained.best_val_score,
                "best_epoch": trained.best_epoch,
                "epochs_run": len(trained.history),
                "train_seconds": trained.seconds,
            },
            tags={
                "params.source": f"tune:{ctx.result.run_ids.get('tune')}"
                if trained.params_source == "tune"
                else "config",
                "device": trained.device,
                "threads": trained.threads,
            },
        )
        tracking.log_values(ctx.result.parent_run_id, tags={"threads": trained.threads})
        tracking.save_outputs(run_id, trained)
        tracking.log_figures(
            run_id,
            {
                "learning_curve.png": plots.learning_curve(
                    trained.history, f"val_{objective.metric}", trained.best_epoch
                )
            },
        )
        model_uri = log_model(trained.predictor(prepared), prepared.frames["test"].head(3))
        mlflow.set_tag("model.uri", model_uri)
    ctx.result.outputs["train"] = trained
    ctx.result.run_ids["train"] = run_id
    ctx.result.outputs["model_uri"] = model_uri


def _run_evaluate(ctx: _Context) -> None:
    cfg = ctx.cfg
    prepared: PreparedData = ctx.upstream("prepare")
    trained: TrainedModel = ctx.upstream("train")
    predictor = trained.predictor(prepared)
    if not ctx.tracking:
        ctx.result.outputs["evaluate"] = evaluate(
            cfg, prepared, predictor, ctx.result.objective, with_figures=False
        )
        return
    with tracking.run_scope(
        "evaluate", ctx.result.experiment_id, ctx.stage_tags("evaluate", ["prepare", "train"]), nested=True
    ) as run:
        run_id = run.info.run_id
        evaluation = evaluate(cfg, prepared, predictor, ctx.result.objective)
        tracking.save_outputs(run_id, evaluation)
        baseline_metrics = {}
        for row in evaluation.baselines[1:]:
            baseline_metrics.update(
                {
                    f"baseline.{row['model']}.{k}": v
                    for k, v in row.items()
                    if k.startswith(("val_", "test_")) and v is not None
                }
            )
        tracking.log_values(
            run_id,
            metrics={
                **{f"test_{k}": v for k, v in evaluation.metrics.items()},
                **baseline_metrics,
                **(
                    {"network_minus_best_baseline": evaluation.difference}
                    if evaluation.difference is not None
                    else {}
                ),
            },
            tags={
                "verdict": evaluation.verdict,
                "best_baseline": evaluation.best_baseline or "",
                "mlflow.note.content": comparison_markdown(evaluation),
            },
        )
        tracking.log_files(
            run_id,
            {
                "comparison.csv": evaluation.table().to_csv(index=False),
                "comparison.md": comparison_markdown(evaluation),
            },
        )
        tracking.log_figures(run_id, evaluation.figures)
    ctx.result.outputs["evaluate"] = evaluation
    ctx.result.run_ids["evaluate"] = run_id


def _run_register(ctx: _Context) -> None:
    git = ctx.git
    from mlflow.tracking import MlflowClient

    cfg = ctx.cfg
    prepared: PreparedData = ctx.upstream("prepare")
    ctx.upstream("train")
    evaluation: Evaluation = ctx.upstream("evaluate")
    model_uri = ctx.result.outputs.get("model_uri") or MlflowClient().get_run(
        ctx.result.run_ids["train"]
    ).data.tags.get("model.uri")
    if not model_uri:
        raise UpstreamMissing(
            f"train run {ctx.result.run_ids['train']} logged no model; run stage train again"
        )
    objective = ctx.result.objective
    with tracking.run_scope(
        "register",
        ctx.result.experiment_id,
        ctx.stage_tags("register", ["prepare", "train", "evaluate"]),
        nested=True,
    ) as run:
        tags = {
            "git.commit": git["commit"],
            "git.dirty": git["dirty"],
            "data.digest": prepared.digest,
            "config.digest": ctx.config_digest,
            "train.run_id": ctx.result.run_ids["train"],
            **{f"test_{k}": f"{v:.6g}" for k, v in evaluation.metrics.items()},
        }
        decision = register(
            cfg, prepared, model_uri, evaluation.metrics[objective.metric], objective, tags, ctx.store_dir
        )
        tracking.save_outputs(run.info.run_id, decision)
        tracking.log_values(
            run.info.run_id,
            tags={
                "registry.model": decision.model_name,
                "registry.version": decision.version,
                "registry.alias": decision.alias,
                "registry.reason": decision.reason,
            },
        )
    ctx.result.outputs["register"] = decision
    ctx.result.run_ids["register"] = run.info.run_id


STAGE_RUNNERS = {
    "prepare": _run_prepare,
    "tune": _run_tune,
    "train": _run_train,
    "evaluate": _run_evaluate,
    "register": _run_register,
}


def run_pipeline(cfg: DictConfig, progress: bool = False, pool: WorkerPool | None = None) -> PipelineResult:
    """Validate the config, then run the chosen stages; errors end every open run FAILED or KILLED.
    `pool`: tuning workers the caller started earlier (`start_workers`); closed here."""
    started = time.perf_counter()
    validate(cfg)
    stages = [s for s in STAGES if s in cfg.stages]
    if pool is None:
        pool = start_workers(cfg)  # they import while the data is read and prepared
    try:
        return _run_stages(cfg, stages, started, progress, pool)
    finally:
        if pool is not None:
            pool.close()


def _run_stages(
    cfg: DictConfig, stages: list[str], started: float, progress: bool, pool: WorkerPool | None
) -> PipelineResult:
    table = read_source(cfg.data)
    from pipeline.data import inspect as inspect_table

    inspected = inspect_table(table, cfg.data)  # the task decides the objective before any stage
    inspection = inspected[1]
    objective = resolve_objective(cfg.objective.metric, cfg.objective.direction, inspection.task)
    result = PipelineResult(stages=stages, objective=objective)
    data_digest = prepared_digest(table.source_digest, cfg)
    store_dir = None
    if cfg.tracking.enabled:
        uri = tracking.tracking_uri(cfg.tracking.uri)
        store_dir = tracking.local_store_dir(uri)
        result.experiment_id = tracking.connect(uri, cfg.tracking.experiment)
        orphans = tracking.reap_orphaned_runs(result.experiment_id)
        if orphans:
            say(f"marked {len(orphans)} run(s) KILLED that a dead process left running")
        ui = uri if uri.startswith(("http://", "https://")) else cfg.tracking.ui_url
        result.link = tracking.runs_table_link(ui, result.experiment_id)
    ctx = _Context(cfg, result, data_digest, config_digest(cfg), store_dir, progress)
    ctx.table, ctx.inspected, ctx.pool = table, inspected, pool
    if not ctx.tracking:
        for stage in stages:
            STAGE_RUNNERS[stage](ctx)
        result.seconds = time.perf_counter() - started
        return result

    tracking.reset_fluent_state()
    git = ctx.git = tracking.git_state()
    name = "pipeline" if stages == list(STAGES) else "+".join(stages)
    parent_tags = {
        "stage": "pipeline",
        "stages": ",".join(stages),
        "data.digest": data_digest,
        "data.name": cfg.data.name,
        "model.name": cfg.model.name,
        "config.digest": ctx.config_digest,
        "git.commit": git["commit"],
        "git.dirty": git["dirty"],
        "seed": str(cfg.seed),
        "threads": str(cfg.train.threads or "auto"),  # the train stage records the count it used
        "objective": f"{objective.metric}/{objective.direction}",
        **tracking.process_tags(),
    }
    with tracking.run_scope(
        f"{name} {cfg.data.name}/{cfg.model.name}", result.experiment_id, parent_tags
    ) as parent:
        result.parent_run_id = parent.info.run_id
        plain = OmegaConf.to_container(cfg, resolve=True)
        files = {"config.yaml": OmegaConf.to_yaml(OmegaConf.create(tracking.mask_values(plain)))}
        if git["diff"]:
            files["git.diff"] = git["diff"]
        tracking.log_files(parent.info.run_id, files)
        tracking.log_values(
            parent.info.run_id,
            params={f"version.{k}": v for k, v in tracking.package_versions().items()}
            | {
                "seed": cfg.seed,
                "data.name": cfg.data.name,
                "model.name": cfg.model.name,
                "objective": objective.metric,
            },
            tags={"data.task": inspection.task},
        )
        for stage in stages:
            STAGE_RUNNERS[stage](ctx)
        _log_parent_summary(ctx)
    result.seconds = time.perf_counter() - started
    return result


def _log_parent_summary(ctx: _Context) -> None:
    outputs, objective = ctx.result.outputs, ctx.result.objective
    metrics: dict[str, float] = {}
    if "train" in outputs:
        metrics[f"val_{objective.metric}"] = outputs["train"].best_val_score
    if "evaluate" in outputs:
        metrics.update({f"test_{k}": v for k, v in outputs["evaluate"].metrics.items()})
    tags = {f"upstream.{s}": r for s, r in ctx.result.run_ids.items()}
    if "register" in outputs:
        decision = outputs["register"]
        tags.update(
            {
                "registry.model": decision.model_name,
                "registry.version": decision.version,
                "registry.alias": decision.alias,
            }
        )
    tracking.log_values(ctx.result.parent_run_id, metrics=metrics, tags=tags)


def summary_lines(result: PipelineResult) -> list[str]:
    """The short table printed at the end of a run."""
    objective, outputs = result.objective, result.outputs
    rows: list[tuple[str, str]] = [
        ("stages", ", ".join(result.stages)),
        ("objective", f"{objective.metric} ({objective.direction})"),
    ]
    if "prepare" in outputs:
        prepared = outputs["prepare"]
        rows.append(
            (
                "data",
                f"{prepared.name}: {prepared.task}"
                + (" (inferred)" if prepared.card.get("task_inferred") and prepared.name == "table" else "")
                + f", {prepared.card['rows_used']} rows, {prepared.features['train'].shape[1]} features",
            )
        )
    if "tune" in outputs:
        tuned = outputs["tune"]
        rows.append(
            (
                "tuning",
                f"{sum(tuned.counts.values())} trials {tuned.counts}, best val {objective.metric} {tuned.best_value:.4f}",
            )
        )
        rows += [(f"  {k}", _short(v)) for k, v in tuned.best_values.items()]
    if "train" in outputs:
        trained = outputs["train"]
        rows.append(
            (
                "train",
                f"params from {trained.params_source}, best epoch {trained.best_epoch + 1}/{len(trained.history)}, "
                f"val {objective.metric} {trained.best_val_score:.4f}, {trained.seconds:.1f}s",
            )
        )
    if "evaluate" in outputs:
        evaluation = outputs["evaluate"]
        keys = ["accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss", "rmse", "mae", "r2"]
        rows.append(
            ("test", ", ".join(f"{k} {evaluation.metrics[k]:.4f}" for k in keys if k in evaluation.metrics))
        )
        for row in evaluation.baselines[1:]:
            rows.append(
                (f"  {row['model']}", f"test {objective.metric} {row[f'test_{objective.metric}']:.4f}")
            )
        rows.append(("verdict", evaluation.verdict))
    if "register" in outputs:
        rows.append(("registry", outputs["register"].line()))
    if result.link:
        rows.append(("runs", result.link + "   (make ui)"))
    rows.append(("time", f"{result.seconds:.1f}s"))
    width = max(len(k) for k, _ in rows)
    return [f"{k.ljust(width)}  {v}" for k, v in rows]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def quiet_libraries() -> None:
    """Route Optuna's and MLflow's messages to the log file instead of the terminal."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    for name in ("mlflow", "alembic", "optuna", "urllib3"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
