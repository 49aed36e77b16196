"""The model card: what a registered version is, how good it is and how to call it, in markdown
for the registry's description field (and the run report)."""

from __future__ import annotations

import json
from typing import Any

from pipeline.ensemble import describe


def request_example(prepared: Any, rows: int = 1) -> dict[str, Any]:
    """A request body for the served model: raw test rows with the model's input columns."""
    frame = prepared.frames["test"][prepared.preprocessing.columns].head(rows)
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False, date_format="iso"))}


def curl_line(prepared: Any, port: int = 5001) -> str:
    body = json.dumps(request_example(prepared), separators=(",", ":"))
    return f"curl -s http://127.0.0.1:{port}/invocations -H 'Content-Type: application/json' -d '{body}'"


def _scores(evaluation: Any) -> list[str]:
    metric = evaluation.objective
    row = evaluation.row(evaluation.winner)
    lines = [f"| {k[5:]} | {v:.4f} |" for k, v in row.items() if k.startswith("test_") and v is not None]
    comparisons = [
        f"- against {c['other']}: {c['difference']:+.4f} [{c['interval'][0]:+.4f}, {c['interval'][1]:+.4f}] "
        f"in test {metric} (95% paired bootstrap)"
        for c in evaluation.comparisons
    ]
    return ["| test metric | value |", "|---|---|", *lines, "", *comparisons]


def model_card(prepared: Any, evaluation: Any, trained: Any, decision: Any, port: int = 5001) -> str:
    """The registered version in a page: data, family and settings, scores, verdict, gate, use."""
    card = prepared.card
    won = evaluation.row(evaluation.winner)
    scores = [("cv", f"cv_{evaluation.objective}"), ("val", f"val_{evaluation.objective}")]
    if trained is None:  # the ensemble: its members' runs hold their settings
        family = f"- family: {evaluation.winner} of {describe(evaluation.ensemble)} (weights)"
        settings = ["- each member's settings: its train run"]
    else:
        family = f"- family: {evaluation.winner} (params from {trained.params_source})"
        values = {**trained.applied_values, **trained.overridden}
        settings = [f"- `{k}` = {v}" for k, v in values.items()] or ["- the configured defaults"]
    return "\n".join(
        [
            f"# {decision.model_name} v{decision.version}: {evaluation.winner}",
            "",
            "## Data",
            f"- {prepared.name}: {prepared.task}, {card['rows_used']} rows, {len(card['features'])} features",
            f"- data digest `{prepared.digest}`; splits {card['split_sizes']} ({card['split_strategy']})",
            "",
            "## Model",
            family,
            *settings,
            f"- objective: {evaluation.objective} ({evaluation.direction}); "
            + ", ".join(f"{basis} {won[key]:.4f}" for basis, key in scores if key in won),
            "",
            "## Scores",
            *_scores(evaluation),
            "",
            f"**Verdict:** {evaluation.verdict}",
            "",
            "## Gate",
            f"- {decision.alias}: {decision.reason}",
            "",
            "## Use",
            "```bash",
            f'make serve ARGS="registry.model_name={decision.model_name}"',
            curl_line(prepared, port),
            "make predict INPUT=rows.csv OUTPUT=predictions.csv",
            "```",
            "",
        ]
    )
