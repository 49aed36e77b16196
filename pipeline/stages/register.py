"""Stage register: a new version of the model in the MLflow Model Registry, and the promotion gate.

Alias `champion` moves to the new version only if its test objective passes `registry.min_score`
and beats the current champion by `registry.min_delta`, both scored now on this run's test split.
Otherwise the new version becomes `challenger`. Every decision is written down."""

from __future__ import annotations

import json
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pipeline.config.schema import RegistryConfig
from pipeline.console import say
from pipeline.ensemble import ENSEMBLE, describe
from pipeline.errors import UpstreamMissing
from pipeline.metrics import Objective
from pipeline.stages import Stage, StageCall
from pipeline.stages.prepare import PreparedData
from pipeline.tracking import registry

CHAMPION, CHALLENGER = "champion", "challenger"
DECISION_TAG = "registry.decision"  # on every version: champion, challenger, interrupted or failed


@dataclass
class Decision:
    model_name: str
    version: str
    alias: str
    reason: str
    objective: str
    direction: str
    new_score: float
    champion_version: str | None = None
    champion_score: float | None = None
    champion_same_data_digest: bool | None = None
    champion_comparable: bool | None = None
    min_score: float | None = None
    min_delta: float = 0.0
    force: bool = False
    family: str | None = None  # the family of the registered model

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "decision.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> Decision:
        return cls(**json.loads((directory / "decision.json").read_text()))

    def line(self) -> str:
        return f"{self.model_name} v{self.version} -> {self.alias}: {self.reason}"


def model_name(cfg: DictConfig) -> str:
    """`registry.model_name`, else the data set's name (a table: its file's stem, `customers`);
    never a family, since the champion may be any family."""
    if cfg.registry.model_name:
        return str(cfg.registry.model_name)
    if cfg.data.name != "table":
        return str(cfg.data.name)
    # a file's stem as a registry name: letters, digits, '.', '_' and '-' only
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(cfg.data.path)).stem).strip("._-") or "table"


def score_model(model_uri: str, prepared: PreparedData, objective: Objective) -> tuple[float | None, str]:
    """Load a registered model and score it on this run's test rows; None when its inputs or
    classes do not match this data set (with the reason)."""
    try:
        model = registry.load_model(model_uri)
    except Exception as exc:  # noqa: BLE001 - e.g. a champion registered by an older version
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return None, f"it could not be loaded ({first}); register it again with this version"
    schema = model.metadata.get_input_schema()
    expected = set(prepared.preprocessing.columns)
    if schema is not None:
        theirs = set(schema.input_names())
        if theirs != expected:
            return None, f"its input columns differ ({len(theirs ^ expected)} not shared)"
    try:
        out = model.predict(prepared.frames["test"])
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot be compared"
        return None, f"it could not score this data ({type(exc).__name__})"
    y = prepared.targets["test"]
    classes = prepared.preprocessing.classes
    if classes is None:
        return objective.score(y, out["prediction"].to_numpy(dtype=float), None), "scored"
    proba_columns = [f"proba_{c}" for c in classes]
    if any(c not in out.columns for c in proba_columns):
        return None, "its classes differ from this data set's"
    proba = out[proba_columns].to_numpy(dtype=float)
    lookup = {str(c): i for i, c in enumerate(classes)}
    pred = np.array([lookup.get(str(v), -1) for v in out["prediction"]])
    return objective.score(y, pred, proba), "scored"


def _lock(store_dir: Path | None, name: str) -> Any:
    """A file lock serializes local registrations; a server store relies on the settle step."""
    if store_dir is None:
        return nullcontext()
    from pipeline.tracking.store import lock

    return lock(store_dir, f"registry-{name}")


def _passes_min_score(objective: Objective, score: float, min_score: float | None) -> bool:
    return min_score is None or (score >= min_score if objective.maximize else score <= min_score)


def _rescore(
    name: str, champion: registry.ModelVersion, prepared: PreparedData, objective: Objective
) -> tuple[float | None, str]:
    """The champion's score on this run's test split, in this run's objective; None (and why)
    when it was judged on another objective or cannot score this data."""
    judged, ours = champion.tags.get("objective"), f"{objective.metric}/{objective.direction}"
    if judged and judged != ours:
        return None, f"it was judged on {judged}, this run on {ours}"
    return score_model(f"models:/{name}/{champion.version}", prepared, objective)


def decide(
    reg: RegistryConfig,
    name: str,
    version: str,
    new_score: float,
    prepared: PreparedData,
    objective: Objective,
) -> Decision:
    """Compare with the current champion (scored now) and choose the alias."""
    decision = Decision(
        name,
        version,
        CHALLENGER,
        "",
        objective.metric,
        objective.direction,
        new_score,
        min_score=reg.min_score,
        min_delta=reg.min_delta,
        force=reg.force,
    )
    champion = registry.alias_version(name, CHAMPION)
    if not _passes_min_score(objective, new_score, reg.min_score):
        word = "below" if objective.maximize else "above"
        decision.reason = (
            f"test {objective.metric} {new_score:.4f} is {word} registry.min_score={reg.min_score}"
        )
    elif champion is None or str(champion.version) == version:
        decision.alias, decision.reason = CHAMPION, "there was no champion"
    else:
        decision.champion_version = str(champion.version)
        decision.champion_same_data_digest = champion.tags.get("data.digest") == prepared.digest
        score, why = _rescore(name, champion, prepared, objective)
        decision.champion_comparable = score is not None
        decision.champion_score = score
        if score is None:
            if reg.force:
                decision.alias = CHAMPION
                decision.reason = f"champion v{champion.version} cannot be compared ({why}); promoted because registry.force=true"
            else:
                decision.reason = (
                    f"champion v{champion.version} cannot be compared ({why}); "
                    "set registry.force=true to promote anyway"
                )
        elif objective.better(new_score, score, reg.min_delta) and (reg.min_delta > 0 or new_score != score):
            decision.alias = CHAMPION
            decision.reason = (
                f"test {objective.metric} {new_score:.4f} beats champion v{champion.version}'s "
                f"{score:.4f} (rescored now) by at least registry.min_delta={reg.min_delta}"
            )
        else:
            decision.reason = (
                f"test {objective.metric} {new_score:.4f} does not beat champion "
                f"v{champion.version}'s {score:.4f} (rescored now) by registry.min_delta={reg.min_delta}"
            )
    return decision


def register(
    reg: RegistryConfig,
    name: str,
    prepared: PreparedData,
    model_uri: str,
    new_score: float,
    objective: Objective,
    tags: dict[str, str],
    store_dir: Path | None,
) -> Decision:
    """Create the version, decide its alias behind the gate, and settle races with others. Every
    version gets a decision tag: its alias, `interrupted` (Ctrl-C, SIGTERM) or `failed` (an
    error) here, and from the next registration when its process was killed."""
    with _lock(store_dir, name):
        for left, alias in registry.undecided_versions(name, DECISION_TAG).items():
            _record_left(name, left, alias)
        version = registry.create_version(name, model_uri, {**tags, **registry.registering_tags()})
        try:
            decision = decide(reg, name, version, new_score, prepared, objective)
            registry.set_alias(name, decision.alias, version)
            if decision.alias == CHAMPION and store_dir is None:
                decision = _settle(reg, name, decision, prepared, objective)
        except BaseException as exc:
            _record_cut_short(name, version, exc)
            raise
        registry.tag_version(
            name, version, {DECISION_TAG: decision.alias, "registry.reason": decision.reason}
        )
    return decision


def _record_left(name: str, version: str, alias: str | None) -> None:
    """Tag a version a killed registration left without a decision: `interrupted`, or the alias
    it holds when it was killed after setting it (that was the gate's decision)."""
    decision = alias or "interrupted"
    tags = {DECISION_TAG: decision}
    if alias:
        tags["registry.reason"] = "its registration was killed after the gate set this alias"
    registry.tag_version(name, version, tags)
    say(
        f"register: {name} v{version} was left without a decision by an interrupted registration; "
        f"tagged {DECISION_TAG}={decision}"
    )


def _record_cut_short(name: str, version: str, exc: BaseException) -> None:
    """Tag a version whose decision was cut short, as far as the store still lets us: the error
    that cut it short is what the person needs to see."""
    import logging

    from pipeline.tracking.provenance import mask

    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (Terminated)
        tags = {DECISION_TAG: "interrupted"}
    else:
        tags = {DECISION_TAG: "failed", "registry.reason": mask(f"{type(exc).__name__}: {exc}")[:5000]}
    try:
        registry.tag_version(name, version, tags)
    except Exception as failure:  # noqa: BLE001 - the next registration tags it instead
        logging.getLogger(__name__).warning("could not tag %s v%s: %s", name, version, failure)


def _settle(
    reg: RegistryConfig,
    name: str,
    decision: Decision,
    prepared: PreparedData,
    objective: Objective,
    rounds: int = 3,
) -> Decision:
    """Against a shared server there is no lock: after setting champion, wait, re-read, and if
    another registration took the alias meanwhile, keep whichever scores better on our split."""
    for _ in range(rounds):
        time.sleep(1.0)
        held = registry.alias_version(name, CHAMPION)
        current = held.version if held is not None else decision.version
        if current == decision.version:
            return decision
        score, _ = score_model(f"models:/{name}/{current}", prepared, objective)
        if score is not None and not objective.better(decision.new_score, score, reg.min_delta):
            registry.set_alias(name, CHALLENGER, decision.version)
            decision.alias, decision.champion_version, decision.champion_score = CHALLENGER, current, score
            decision.reason = f"a concurrent registration v{current} scored {score:.4f}, at least as good"
            return decision
        registry.set_alias(name, CHAMPION, decision.version)
    return decision


def run(call: StageCall) -> Decision:
    prepared: PreparedData = call.upstream["prepare"]
    evaluation = call.upstream["evaluate"]
    winner = evaluation.winner
    if winner == ENSEMBLE:  # logged by the evaluate run; a family's model by its train run
        stage, model_run = "evaluate", call.upstream_runs["evaluate"]
    else:
        stage, model_run = "train", call.upstream_runs[f"train.{winner}"]
    model_uri = model_run.tags.get("model.uri")
    if not model_uri:
        raise UpstreamMissing(f"{stage} run {model_run.run_id} logged no model; run stage {stage} again")
    objective, git = call.invocation.objective, call.invocation.git
    new_score = evaluation.metrics[objective.metric]
    cv = f"cv_{objective.metric}" in evaluation.row(winner)
    tags = {
        "git.commit": git["commit"],
        "git.dirty": git["dirty"],
        "data.digest": prepared.digest,
        "config.digest": call.invocation.config_digest,
        "model.run_id": model_run.run_id,
        "model.sha256": model_run.tags.get("model.sha256", ""),
        "model.family": winner,
        **({"ensemble.weights": describe(evaluation.ensemble)} if winner == ENSEMBLE else {}),
        "objective": f"{objective.metric}/{objective.direction}",
        "val_score": f"{evaluation.row(winner)[f'val_{objective.metric}']:.6g}",
        **({"cv_score": f"{evaluation.row(winner)[f'cv_{objective.metric}']:.6g}"} if cv else {}),
        "selected_on": evaluation.selected_on,
        "test_score": f"{new_score:.6g}",
        **{f"test_{k}": f"{v:.6g}" for k, v in evaluation.metrics.items()},
    }
    decision = register(
        call.cfg.registry,
        model_name(call.cfg),
        prepared,
        model_uri,
        new_score,
        objective,
        tags,
        call.invocation.store_dir,
    )
    decision.family = winner
    from pipeline.model_card import model_card

    card = model_card(prepared, evaluation, call.upstream["train"].get(winner), decision, call.cfg.serve.port)
    registry.describe(decision.model_name, decision.version, card, {})
    return decision


def record(run: Any, decision: Decision, call: StageCall) -> None:
    run.log(
        tags={
            "registry.model": decision.model_name,
            "registry.version": decision.version,
            "registry.alias": decision.alias,
            "registry.reason": decision.reason,
            "model.family": decision.family or "",
        }
    )


STAGE = Stage(
    name="register",
    needs=("prepare", "train", "evaluate"),
    output=Decision,
    run=run,
    record=record,
)
