"""The ensemble of the trained families: a weighted mean of their predictions, the weights chosen
greedily (Caruana et al., "Ensemble Selection from Libraries of Models", 2004, as AutoGluon's
weighted ensemble): start from the best family, then add, with repetition, whichever family most
improves the blend's objective, and keep the best blend seen. On a small table one family's lead
is often noise; a blend of two or three families is steadier on new rows. It competes with the
families on what chooses them: their out-of-fold predictions on the training and validation rows
when they have them, else the validation split.

Each family's validation predictions are those of its first fit (a refit has seen the validation
rows), and out-of-fold ones come from fits that never saw the row: the weights are never chosen
on a row a member was fitted on."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.metrics import Objective

ENSEMBLE = "ensemble"
MIXED = "mixed"  # the ensemble's encoding: each member takes its own
META_FILE, MEMBERS_DIR = "ensemble.json", "members"
# a trained family's predictions that selection reads: attribute -> file
PREDICTION_FILES = {"val_predictions": "val_predictions.npz", "oof_predictions": "oof_predictions.npz"}

Predictions = tuple[np.ndarray, np.ndarray | None]  # class indices (or values), probabilities


def blend(weights: Mapping[str, float], predictions: Mapping[str, Predictions]) -> Predictions:
    """The weighted mean of the members' probabilities (values for regression); the predicted
    class is the blend's most probable."""
    total = sum(weights.values())
    first = predictions[next(iter(weights))]
    if first[1] is None:
        values = sum(w * np.asarray(predictions[n][0], dtype=np.float64) for n, w in weights.items())
        return values / total, None
    proba = sum(w * predictions[n][1] for n, w in weights.items()) / total
    return proba.argmax(axis=1), proba


def greedy_weights(
    objective: Objective, y: np.ndarray, predictions: Mapping[str, Predictions], rounds: int
) -> dict[str, float]:
    """Each member's weight (summing to 1) after up to `rounds` greedy additions on (`y`,
    `predictions`), the blend with the best objective kept; members never chosen are left out."""
    scores = {name: objective.score(y, *p) for name, p in predictions.items()}
    usable = [n for n, s in scores.items() if np.isfinite(s)]
    if not usable:
        return {}
    # the best single member first; a tie in later rounds keeps the earlier (better) member
    ordered = sorted(usable, key=lambda n: scores[n], reverse=objective.maximize)
    counts = dict.fromkeys(ordered, 0)
    counts[ordered[0]] = 1
    best_counts, best_score = dict(counts), scores[ordered[0]]
    for _ in range(rounds - 1):
        trial_scores = {}
        for name in ordered:
            trial = {n: c + (n == name) for n, c in counts.items() if c or n == name}
            trial_scores[name] = objective.score(y, *blend(trial, predictions))
        chosen = max(
            ordered, key=lambda n: (objective.improvement(trial_scores[n], best_score), -ordered.index(n))
        )
        counts[chosen] += 1
        if objective.improvement(trial_scores[chosen], best_score) > 0:
            best_counts, best_score = dict(counts), trial_scores[chosen]
    total = sum(best_counts.values())
    return {n: c / total for n, c in best_counts.items() if c}


def save_predictions(trained: Any, directory: Path) -> None:
    """A trained family's validation and out-of-fold predictions, beside its saved model."""
    for attribute, name in PREDICTION_FILES.items():
        predictions = getattr(trained, attribute)
        if predictions is not None:
            pred, proba = predictions
            np.savez(directory / name, pred=pred, **({} if proba is None else {"proba": proba}))


def load_predictions(directory: Path) -> dict[str, Predictions | None]:
    """What `save_predictions` wrote, by attribute; None for what it did not (none made, or an
    earlier version's run). Plain arrays only, never pickled objects."""
    loaded: dict[str, Predictions | None] = dict.fromkeys(PREDICTION_FILES)
    for attribute, name in PREDICTION_FILES.items():
        if (directory / name).is_file():
            with np.load(directory / name, allow_pickle=False) as saved:
                loaded[attribute] = saved["pred"], saved["proba"] if "proba" in saved else None
    return loaded


class EnsembleModel:
    """Fitted models of several families and their weights: predicts the weighted mean."""

    kind = ENSEMBLE
    encoding = MIXED

    def __init__(self, members: Mapping[str, Any], weights: Mapping[str, float]):
        self.members, self.weights = dict(members), dict(weights)

    @property
    def encodings(self) -> list[str]:
        """The feature encodings its members take, each computed once per request."""
        return sorted({m.encoding for m in self.members.values()})

    @property
    def kinds(self) -> set[str]:
        return {m.kind for m in self.members.values()}

    def predict(self, features: Mapping[str, Any]) -> Predictions:
        """`features`: the rows in each of `encodings`."""
        each = {n: m.predict(features[m.encoding]) for n, m in self.members.items()}
        return blend(self.weights, each)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, member in self.members.items():
            member.save(directory / MEMBERS_DIR / name)
        (directory / META_FILE).write_text(json.dumps({"kind": self.kind, "weights": self.weights}))

    @classmethod
    def load(cls, directory: Path) -> EnsembleModel:
        from pipeline.config.choices import FAMILIES
        from pipeline.families import load_fitted
        from pipeline.persistence import UntrustedFile

        weights = json.loads((directory / META_FILE).read_text())["weights"]
        unknown = [n for n in weights if n not in FAMILIES]
        if unknown:  # a member's name becomes a path: only the families' names are accepted
            raise UntrustedFile(f"{META_FILE} names no model family in {unknown[:3]!r}; not loading it")
        members = {n: load_fitted(directory / MEMBERS_DIR / n) for n in weights}
        return cls(members, {n: float(w) for n, w in weights.items()})


def describe(weights: Mapping[str, float]) -> str:
    """The weights in words: `hist_gradient_boosting 0.60, network 0.40`."""
    return ", ".join(f"{n} {w:.2f}" for n, w in sorted(weights.items(), key=lambda kv: -kv[1]))
