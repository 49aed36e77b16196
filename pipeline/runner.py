"""Runs the chosen stages in order: one parent run per invocation, then for each stage: find its
upstream outputs (from this invocation, from `from_run`, or the newest matching run), open its
run, run it, save its outputs, and let it record the rest. Stages are plain functions declared in
`pipeline.stages`; the recorder (MLflow, or nothing with `tracking.enabled=false`) tracks them."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

from omegaconf import DictConfig

from pipeline.console import say
from pipeline.late_finish import LateFinishes
from pipeline.lineage import identity, resolve, run_key
from pipeline.metrics import Objective, resolve_objective
from pipeline.parent_run import config_digest, parent_tags, record_invocation, record_outcome
from pipeline.stages import ORDER, Invocation, Opening, Stage, StageCall, UpstreamRun, stage
from pipeline.tracking.provenance import apply_credentials, git_state
from pipeline.tracking.recorder import FoundRun, Recorder, recorder_for


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
    link_note: str = ""  # how to open the link: "(make ui)" for a local store
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage run
    runs: dict[str, UpstreamRun] = field(default_factory=dict, repr=False)  # id and tags per stage


def run_pipeline(
    cfg: DictConfig,
    progress: bool = False,
    pool: Any = None,
    checked: bool = False,
    explicit: set[str] | frozenset[str] = frozenset(),
    source: tuple[Any, Any] | None = None,
) -> PipelineResult:
    """Run the chosen stages; errors end every open run FAILED or KILLED. `checked`: the caller
    has validated `cfg` already. `pool`: tuning workers the caller started early; closed here.
    `explicit`: the keys set on the command line, which beat tuned values. `source`: the data
    set as `read_and_inspect` returns it, when the caller has read it already."""
    started = time.perf_counter()
    try:
        if not checked:
            from pipeline.config import validate

            validate(cfg)
        stages = [s for s in ORDER if s in cfg.stages]
        return _run(cfg, stages, started, progress, pool, frozenset(explicit), source)
    finally:
        if pool is not None:
            pool.close()


def _run(
    cfg: DictConfig,
    stages: list[str],
    started: float,
    progress: bool,
    pool: Any,
    explicit: frozenset[str],
    given: tuple[Any, Any] | None,
) -> PipelineResult:
    from pipeline.data.identity import prepared_digest
    from pipeline.data.inspection import read_and_inspect

    apply_credentials(cfg.tracking.credentials)
    # the task decides the objective before any stage
    source, inspected = given if given is not None else read_and_inspect(cfg.data)
    objective = resolve_objective(cfg.objective.metric, cfg.objective.direction, inspected[1].task)
    result = PipelineResult(stages=stages, objective=objective)
    data_digest = prepared_digest(source.source_digest, cfg.data, cfg.seed)
    recorder = recorder_for(cfg.tracking)
    result.experiment_id, result.link = recorder.experiment_id, recorder.link
    result.link_note = recorder.link_note
    if orphans := recorder.reap_orphans():
        say(f"marked {len(orphans)} run(s) KILLED that a dead process left running")
    git = git_state() if recorder.enabled else {}
    digest = config_digest(cfg)
    name = "pipeline" if stages == list(ORDER) else "+".join(stages)
    tags = parent_tags(cfg, stages, data_digest, digest, git, objective)
    late = LateFinishes()
    with recorder.pipeline_run(f"{name} {cfg.data.name}/{cfg.model.name}", tags) as parent:
        result.parent_run_id = parent.run_id
        record_invocation(parent, cfg, git, objective, inspected[1].task)
        invocation = Invocation(
            objective,
            source,
            inspected,
            data_digest,
            digest,
            git,
            progress,
            pool,
            recorder.store_dir,
            parent.run_id,
            explicit,
            late.finish,
        )
        with late:
            for name in stages:
                _run_stage(stage(name), cfg, invocation, recorder, result, late)
        record_outcome(parent, stages, result.outputs, result.run_ids, objective)
        if recorder.enabled and cfg.tracking.report:
            _report(parent, result, cfg, git, digest)
    result.seconds = time.perf_counter() - started
    return result


def _report(parent: Any, result: PipelineResult, cfg: DictConfig, git: dict[str, str], digest: str) -> None:
    """The run report, as the invocation's run's `report.html`."""
    from pipeline.report import build_report

    building = time.perf_counter()
    page = build_report(result, git, digest, int(cfg.seed), int(cfg.serve.port), bool(cfg.tracking.plots))
    parent.files({"report.html": page})
    parent.log(metrics={"report_seconds": time.perf_counter() - building})


def _run_stage(
    declared: Stage,
    cfg: DictConfig,
    invocation: Invocation,
    recorder: Recorder,
    result: PipelineResult,
    late: LateFinishes,
) -> None:
    for family in list(cfg.candidates) if declared.per_family else [None]:
        output = _run_once(declared, family, cfg, invocation, recorder, result, late)
        if family is None:
            result.outputs[declared.name] = output
        else:
            result.outputs.setdefault(declared.name, {})[family] = output
        for line in declared.notes(output) if declared.notes is not None else []:
            say(line)


def _run_once(
    declared: Stage,
    family: str | None,
    cfg: DictConfig,
    invocation: Invocation,
    recorder: Recorder,
    result: PipelineResult,
    late: LateFinishes,
) -> Any:
    """One run of a stage (of one family): resolve its inputs, open its run, run or reuse it,
    save its outputs and record the rest."""
    upstream, runs = resolve(declared, family, cfg, invocation, recorder, result)
    objective = invocation.objective
    tags = {
        "stage": declared.name,
        "data.digest": invocation.data_digest,
        "data.name": cfg.data.name,
        "model.name": cfg.model.name,
        "config.digest": invocation.config_digest,
        **({"objective": f"{objective.metric}/{objective.direction}"} if declared.name != "prepare" else {}),
        **({"model.family": family} if family is not None else {}),
        **{f"upstream.{key}": run.run_id for key, run in runs.items() if run.run_id},
    }
    call = StageCall(cfg, upstream, runs, invocation, recorder, tags, family)
    reused = None
    if declared.reusable is not None and declared.reusable(cfg):
        reused = recorder.find(declared.name, identity(cfg, invocation, declared.name), None)
    opening = declared.open(call) if declared.open is not None else Opening()
    name = declared.name if family is None else f"{declared.name} {family}"
    started = time.perf_counter()
    finishes_late = declared.finish_late and recorder.enabled and reused is None
    opened = recorder.stage_run(
        name, {**tags, **opening.tags}, opening.run_id, declared.system_metrics, detached=finishes_late
    )
    with ExitStack() as scope:
        record = scope.enter_context(opened)
        call = call.opened(record, opening.state)
        output = _reuse(declared, reused, recorder, record) if reused else declared.run(call)
        call = replace(call, reused=reused.outputs_run if reused else None)
        if finishes_late:  # the run ends once its outputs are saved, later
            late.add(scope.pop_all(), _finish, declared, output, call)
        else:
            late.finish()  # an upstream run ends before this one
            _finish(declared, output, call)
    key = run_key(declared.name, family)
    result.stage_seconds[key] = time.perf_counter() - started
    if record.run_id is not None:
        result.run_ids[key] = reused.outputs_run if reused is not None else record.run_id
    result.runs[key] = UpstreamRun(result.run_ids.get(key), record.tags)  # filled in by `record`
    return output


def _finish(declared: Stage, output: Any, call: StageCall) -> None:
    """Save a stage's outputs (unless reused) and write the rest of its record."""
    if call.reused is None:
        call.record.save_outputs(output)
    call.record.flush()
    if declared.record is not None:
        declared.record(call.record, output, call)


def _reuse(declared: Stage, reused: FoundRun, recorder: Recorder, record: Any) -> Any:
    """The outputs of an earlier run with the same inputs, instead of running the stage again."""
    record.log(tags={"reused.run": reused.outputs_run, f"{declared.name}.cache": "hit"})
    say(
        f"{declared.name}: reusing run {reused.outputs_run} "
        f"(same data and settings; {declared.name}.force=true recomputes)"
    )
    return recorder.load(reused, declared.output_type(None))
