"""Stage prepare: read the data set, check it, split train/val/test with the seed, and fit the
preprocessing on the training split only."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import persistence
from pipeline.config.schema import DataConfig
from pipeline.data.card import card_markdown, data_card
from pipeline.data.identity import prepared_digest
from pipeline.data.inspection import coerce_features, inspect
from pipeline.data.read import Table, read_source
from pipeline.preprocessing import Preprocessing, build_preprocessor
from pipeline.splitting import SPLITS, split_digests, split_rows
from pipeline.stages import Stage, StageCall
from pipeline.training.data import TrainingData

SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # MLflow's names


class SplitFrames(Mapping):
    """The raw feature rows of each split, taken from the prepared rows when asked for, so the
    prepared data holds the table's rows once rather than once more per split."""

    def __init__(self, rows: pd.DataFrame, index: dict[str, np.ndarray]):
        self._rows, self._index = rows, index

    def __getitem__(self, split: str) -> pd.DataFrame:
        frame = self._rows.iloc[self._index[split]].reset_index(drop=True)
        # text as text, like raw rows (the categories are a storage detail of the prepared rows)
        return frame.astype({c: "str" for c in frame.select_dtypes("category").columns})

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@dataclass
class PreparedData:
    """The prepare stage's output: the coerced feature rows with each split's positions in them,
    encoded targets per split, model features per split, the fitted preprocessing, and what
    identifies the data (digests) and describes it (the data card)."""

    name: str
    task: str
    target: str
    rows: pd.DataFrame
    index: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    preprocessing: Preprocessing
    digest: str
    source_digest: str
    split_digests: dict[str, str]
    card: dict[str, Any]

    def __post_init__(self) -> None:
        self.frames = SplitFrames(self.rows, self.index)
        self.features = {s: self.preprocessing.transform(self.rows, self.index[s]) for s in SPLITS}
        self._encoded: dict[str, dict[str, Any]] = {"onehot": self.features}

    @property
    def n_classes(self) -> int:
        return len(self.preprocessing.classes or [])

    def encoded(self, encoding: str) -> dict[str, Any]:
        """Each split's features in an encoding ("onehot", or "codes" for model=tabular),
        computed when first asked for."""
        if encoding not in self._encoded:
            self._encoded[encoding] = {
                s: self.preprocessing.transform(self.rows, self.index[s], encoding) for s in SPLITS
            }
        return self._encoded[encoding]

    def training_data(self, encoding: str = "onehot") -> TrainingData:
        features = self.encoded(encoding)
        return TrainingData(
            features["train"],
            self.targets["train"],
            features["val"],
            self.targets["val"],
            self.task,
            self.n_classes,
            self.preprocessing.image_shape,
            self.preprocessing.layout if encoding == "codes" else None,
        )

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.rows.to_parquet(directory / "rows.parquet", index=False)
        np.savez(
            directory / "splits.npz",
            **{f"index_{s}": self.index[s] for s in SPLITS},
            **{f"target_{s}": self.targets[s] for s in SPLITS},
        )
        persistence.dump(self.preprocessing, directory / "preprocessing.skops")
        meta = {
            k: getattr(self, k)
            for k in ("name", "task", "target", "digest", "source_digest", "split_digests")
        }
        (directory / "prepared.json").write_text(json.dumps(meta, indent=2))
        (directory / "data_card.json").write_text(json.dumps(self.card, indent=2, default=str))
        (directory / "data_card.md").write_text(card_markdown(self.card))

    @classmethod
    def load(cls, directory: Path) -> PreparedData:
        meta = json.loads((directory / "prepared.json").read_text())
        with np.load(directory / "splits.npz", allow_pickle=False) as arrays:
            index = {s: arrays[f"index_{s}"] for s in SPLITS}
            targets = {s: arrays[f"target_{s}"] for s in SPLITS}
        return cls(
            rows=pd.read_parquet(directory / "rows.parquet"),
            index=index,
            targets=targets,
            preprocessing=persistence.load(directory / "preprocessing.skops"),
            card=json.loads((directory / "data_card.json").read_text()),
            **meta,
        )


def fit_preprocessing(
    train_rows: pd.DataFrame,
    column_types: dict[str, str],
    classes: list | None,
    data_cfg: DataConfig,
    table: Table,
) -> Preprocessing:
    """The preprocessing, fitted on the training rows only: one-hot features for most models, and
    for a table also the codes a network that embeds its inputs takes (model=tabular)."""
    transformer = build_preprocessor(
        column_types, table.image_shape is not None, data_cfg.rare_level_min_count
    )
    transformer.fit(train_rows)
    codes = None
    if table.image_shape is None:
        from pipeline.codes import CodesEncoder

        codes = CodesEncoder(column_types, data_cfg.rare_level_min_count).fit(train_rows)
    return Preprocessing(
        transformer, column_types, classes, data_cfg.one_hot_sparse_above, table.image_shape, codes
    )


def prepare(
    data_cfg: DataConfig,
    seed: int,
    table: Table | None = None,
    inspected: tuple[pd.DataFrame, Any] | None = None,
) -> PreparedData:
    """Read and check (unless already done), split, and fit preprocessing on the training split."""
    table = table or read_source(data_cfg)
    frame, inspection = inspected or inspect(table, data_cfg)
    target = frame[table.target]
    task = inspection.task
    split_cfg = data_cfg.split
    strategy = inspection.split_strategy
    index = split_rows(
        frame,
        target,
        strategy,
        split_cfg.val_size,
        split_cfg.test_size,
        int(seed),
        split_cfg.group,
        split_cfg.time,
    )

    # model types for every used row: numbers pass through uncopied, text becomes categories
    rows = coerce_features(frame, inspection.column_types).reset_index(drop=True)
    classes = (
        None if task == "regression" else sorted(target.unique().tolist(), key=lambda v: (str(type(v)), v))
    )
    preprocessing = fit_preprocessing(
        rows.iloc[index["train"]], inspection.column_types, classes, data_cfg, table
    )
    targets = {s: preprocessing.encode_target(target.iloc[index[s]]) for s in SPLITS}
    card = data_card(table, frame, inspection, {s: int(len(index[s])) for s in SPLITS})
    card["split_strategy"] = strategy
    return PreparedData(
        name=data_cfg.name,
        task=task,
        target=table.target,
        rows=rows,
        index=index,
        targets=targets,
        preprocessing=preprocessing,
        digest=prepared_digest(table.source_digest, data_cfg, seed),
        source_digest=table.source_digest,
        split_digests=split_digests(frame, index),
        card=card,
    )


def run(call: StageCall) -> PreparedData:
    source, inspected = call.invocation.source, call.invocation.inspected
    return prepare(call.cfg.data, int(call.cfg.seed), source, inspected)


def record(run: Any, prepared: PreparedData, call: StageCall) -> None:
    source = call.invocation.source.source if prepared.name == "table" else None
    for split, context in SPLIT_CONTEXTS.items():
        frame = prepared.frames[split]
        frame[prepared.target] = prepared.preprocessing.decode(prepared.targets[split])
        digest = prepared.split_digests[split]
        # the parent run shows the training rows too (the runs table's Dataset column)
        parent = call.invocation.parent_run_id if split == "train" else None
        run.dataset(frame, source, prepared.target, prepared.name, digest, context, also_in=parent)
    card = prepared.card
    run.log(
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


def notes(prepared: PreparedData) -> list[str]:
    return [f"warning: {warning}" for warning in prepared.card["warnings"]]


STAGE = Stage(
    name="prepare",
    needs=(),
    output=PreparedData,
    run=run,
    record=record,
    reusable=lambda cfg: not cfg.prepare.force,
    notes=notes,
    finish_late=True,  # the tuning workers start before the prepared data is saved
)
