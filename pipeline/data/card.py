"""The data card: what a person wants to know about the data before trusting a model on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.inspection import Inspection
from pipeline.data.read import Table


def data_card(
    table: Table, frame: pd.DataFrame, inspection: Inspection, split_sizes: dict[str, int]
) -> dict[str, Any]:
    """What a person wants to know about the data before trusting a model trained on it."""
    target = frame[table.target]
    card: dict[str, Any] = {
        "source": table.source,
        "source_digest": table.source_digest,
        "rows": int(len(table.frame)),
        "rows_used": int(len(frame)),
        "columns": int(table.frame.shape[1]),
        "target": table.target,
        "task": inspection.task,
        "task_inferred": inspection.task_inferred,
        "features": {
            c: {"type": t, "missing_share": round(float(frame[c].isna().mean()), 4)}
            for c, t in inspection.column_types.items()
        },
        "dropped_columns": inspection.dropped,
        "rows_dropped_missing_target": inspection.rows_dropped_missing_target,
        "warnings": inspection.warnings,
        "warning_count": len(inspection.warnings),
        "split_sizes": split_sizes,
    }
    if inspection.task != "regression":
        balance = target.value_counts(normalize=True).sort_index()
        card["class_balance"] = {str(k): round(float(v), 4) for k, v in balance.items()}
    else:
        card["target_summary"] = {k: float(v) for k, v in target.describe().items()}
    return card


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# Data card: {Path(card['source']).name}",
        "",
        f"- rows: {card['rows']} ({card['rows_used']} used), columns: {card['columns']}",
        f"- target: `{card['target']}`, task: {card['task']}"
        + (" (inferred)" if card["task_inferred"] else ""),
        f"- splits: {card['split_sizes']}",
        f"- warnings: {card['warning_count']}",
        "",
        "| feature | type | missing |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | {f['type']} | {f['missing_share']:.1%} |" for c, f in card["features"].items()]
    if card["dropped_columns"]:
        lines += ["", "| dropped column | why |", "|---|---|"]
        lines += [f"| {c} | {why} |" for c, why in card["dropped_columns"].items()]
    if "class_balance" in card:
        lines += ["", "| class | share |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in card["class_balance"].items()]
    if card["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in card["warnings"]]
    return "\n".join(lines) + "\n"
