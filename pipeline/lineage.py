"""Which runs are the right inputs of a stage: this invocation's outputs, the runs `from_run`
names, or the newest finished runs with the same identity (data digest, objective, family,
study); and once one upstream run is chosen, the runs it used itself, so that a stage run alone
gets inputs that belong together."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from pipeline.console import say
from pipeline.errors import UpstreamMissing
from pipeline.stages import ORDER, Invocation, UpstreamRun, stage


def run_key(name: str, family: str | None) -> str:
    """How a stage run is named in tags and results: `train.network` for a per-family stage."""
    return name if family is None else f"{name}.{family}"


def identity(cfg: DictConfig, invocation: Invocation, name: str, family: str | None = None) -> dict[str, str]:
    """The tags that make a run of stage `name` (of `family`) the right input for this config."""
    return identities(cfg, invocation, name, family)[0]


def identities(
    cfg: DictConfig, invocation: Invocation, name: str, family: str | None = None
) -> list[dict[str, str]]:
    """The tag sets that make a run of stage `name` the right input, best first (a tune run of
    the search this command line fixes, else of the whole search)."""
    found = {"data.digest": invocation.data_digest}
    if name == "prepare":
        return [found]
    objective = invocation.objective
    found["objective"] = f"{objective.metric}/{objective.direction}"
    if family is not None:
        found["model.family"] = family
        if family == "network":
            found["model.name"] = cfg.model.name
    declared = stage(name)
    if declared.identity is None:
        return [found]
    return [{**found, **extra} for extra in declared.identity(cfg, invocation, family)]


def resolve(
    declared: Any, family: str | None, cfg: DictConfig, invocation: Invocation, recorder: Any, result: Any
) -> tuple[dict[str, Any], dict[str, UpstreamRun]]:
    """The upstream outputs of a run of `declared` (for `family`), and the runs they came from.
    Later stages are resolved first: the runs they used pin the earlier ones."""
    upstream: dict[str, Any] = {}
    runs: dict[str, UpstreamRun] = {}
    pinned: dict[str, str] = {}
    missing: list[UpstreamMissing] = []
    # an optional input (tuned values) comes from an earlier run only when this run continues
    # earlier runs (its required inputs were not made now) or `from_run` names them: a fresh
    # `stages=[prepare,train,evaluate]` trains with the configured values
    continuing = bool(cfg.from_run) or not any(name in cfg.stages for name in declared.needs)
    for name, required in sorted(declared.upstream(cfg), key=lambda item: -ORDER.index(item[0])):
        if not required and not continuing and run_key(name, family) not in result.runs:
            continue
        fan_in = stage(name).per_family and family is None
        families = list(cfg.candidates) if fan_in else [family if stage(name).per_family else None]
        outputs = {}
        for each in families:
            key = run_key(name, each)
            try:
                output = _one(name, each, required, cfg, invocation, recorder, result, pinned.get(key))
            except UpstreamMissing as error:
                missing.append(error)
                continue
            if output is None:
                continue
            outputs[each] = output
            runs[key] = result.runs[key]
            pinned.update({k[9:]: v for k, v in runs[key].tags.items() if k.startswith("upstream.")})
        if outputs:
            upstream[name] = outputs if fan_in else outputs[families[0]]
    if missing:
        raise missing[-1]  # the earliest stage missing: the one to run first
    return upstream, runs


def _one(
    name: str,
    family: str | None,
    required: bool,
    cfg: DictConfig,
    invocation: Invocation,
    recorder: Any,
    result: Any,
    pinned: str | None,
) -> Any:
    key = run_key(name, family)
    if key in result.runs:
        produced = result.outputs[name]
        return produced if family is None else produced[family]
    if pinned:
        found = recorder.get(pinned)
    else:
        found = None
        for filters in identities(cfg, invocation, name, family):
            found = found or recorder.find(name, filters, cfg.from_run, required, family)
    if found is None:
        if required and recorder.enabled:
            what = f"'{name}' run" if family is None else f"'{name}' run of family '{family}'"
            raise UpstreamMissing(
                f"no finished {what} for data {cfg.data.name} (digest {invocation.data_digest[:8]}), "
                f"objective {invocation.objective.metric} and model {cfg.model.name} in experiment "
                f"{cfg.tracking.experiment!r}; run stage {name} first (make {name}) or give from_run=<run id>"
            )
        if recorder.enabled:
            say(
                f"{key}: no finished run matches this data, objective and search; "
                "the configured values are used"
            )
        return None
    say(f"{key}: using run {found.describe()}")
    output = recorder.load(found, stage(name).output_type(family))
    if family is None:
        result.outputs[name] = output
    else:
        result.outputs.setdefault(name, {})[family] = output
    result.run_ids[key] = result.upstream_used[key] = found.run_id
    result.runs[key] = UpstreamRun(found.run_id, found.tags)
    return output
