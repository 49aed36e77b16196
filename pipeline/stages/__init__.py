"""The stages and how one is declared. Each module here is one stage and ends with its `STAGE`:
what it needs from upstream, what it returns, `run` (the work, a plain function of its config
sections and upstream outputs) and `record` (what its MLflow run shows besides its outputs). The
runner does the rest: finding upstream outputs, opening runs, saving outputs.

Adding a stage is one module plus one name in `ORDER`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import import_module
from pathlib import Path
from typing import Any

ORDER = ("prepare", "tune", "train", "evaluate", "register")


@dataclass(frozen=True)
class Invocation:
    """What every stage of one invocation shares, settled before the first stage runs."""

    objective: Any  # metrics.Objective
    source: Any  # data.read.Table, read once
    inspected: tuple[Any, Any]  # (frame, Inspection) of the source, checked once
    data_digest: str
    config_digest: str
    git: dict[str, str] = field(default_factory=dict)
    progress: bool = False
    pool: Any = None  # tuning workers started with the command (tune.n_jobs > 1)
    store_dir: Path | None = None  # the local store's folder (None: a server, or no tracking)
    parent_run_id: str | None = None
    explicit: frozenset[str] = frozenset()  # keys set on the command line: they beat tuned values
    # ends the runs of earlier stages that are still open (Stage.finish_late): their outputs
    # saved, their records written. A stage that starts workers calls it once they have their
    # work; the runner calls it before a stage's run ends at the latest
    finish_upstream: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class UpstreamRun:
    """The run an upstream output came from: its id and tags (e.g. `model.uri`)."""

    run_id: str | None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StageCall:
    """One stage's inputs: the config, upstream outputs and the tags of their runs, the
    invocation, and the open run its `record` writes to."""

    cfg: Any  # DictConfig
    upstream: Mapping[str, Any]
    upstream_runs: Mapping[str, UpstreamRun]
    invocation: Invocation
    recorder: Any  # tracking.recorder.Recorder
    tags: Mapping[str, str] = field(default_factory=dict)  # the stage run's identity and lineage
    family: str | None = None  # the model family, for a stage that runs once per candidate
    record: Any = None  # the open run: tracking.recorder.StageRecord or NullRecord
    state: Any = None  # what the stage's `open` prepared
    reused: str | None = None  # a reusable stage's earlier run whose outputs are reused

    def opened(self, record: Any, state: Any) -> StageCall:
        return replace(self, record=record, state=state)

    @property
    def plots(self) -> bool:
        """Whether the stage draws its figures: tracked, and `tracking.plots` not turned off."""
        return bool(self.recorder.enabled and self.cfg.tracking.plots)


@dataclass(frozen=True)
class Opening:
    """What a stage settles before its run opens: an existing run to continue, extra tags."""

    run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    state: Any = None


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]  # upstream stages whose outputs it cannot run without
    # its output type (save(dir), load(dir)), or family name -> the type, for a per-family stage
    output: type | Callable[[str], type]
    run: Callable[[StageCall], Any]
    record: Callable[[Any, Any, StageCall], None] | None = None  # (run, output, call)
    # upstream stages whose outputs it takes when there are some (or a function of the config)
    uses: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
    open: Callable[[StageCall], Opening] | None = None
    # config -> whether a finished run with the same inputs is reused instead of run again
    reusable: Callable[[Any], bool] | None = None
    notes: Callable[[Any], list[str]] | None = None  # lines for the person at the terminal
    per_family: bool = False  # one run per candidate family (its output: one per family)
    system_metrics: bool = False  # its run samples CPU, memory and GPU (tracking.system_metrics)
    # its run stays open, its outputs unsaved, until the next stage has started its workers
    # (Invocation.finish_upstream): they need not wait for the save (the next stages of the
    # invocation take its output from memory)
    finish_late: bool = False
    # (config, invocation, family) -> tag sets (best first) beyond the usual ones that a run must
    # have to be the right input for this config (the tune stage: its study)
    identity: Callable[[Any, Invocation, str | None], list[dict[str, str]]] | None = None

    def output_type(self, family: str | None) -> type:
        return self.output if isinstance(self.output, type) else self.output(family)

    def upstream(self, cfg: Any) -> list[tuple[str, bool]]:
        """(upstream stage, required) for a run of `cfg`."""
        uses = self.uses(cfg) if callable(self.uses) else self.uses
        return [(name, True) for name in self.needs] + [(name, False) for name in uses]


def stage(name: str) -> Stage:
    """The declaration of stage `name` (its module is imported now, not before)."""
    return import_module(f"pipeline.stages.{name}").STAGE
