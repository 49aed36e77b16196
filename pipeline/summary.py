"""The short table printed at the end of a run."""

from __future__ import annotations

from typing import Any

TEST_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss", "rmse", "mae", "r2")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _data_line(prepared: Any) -> str:
    inferred = " (inferred)" if prepared.card.get("task_inferred") and prepared.name == "table" else ""
    return (
        f"{prepared.name}: {prepared.task}{inferred}, {prepared.card['rows_used']} rows, "
        f"{prepared.features['train'].shape[1]} features"
    )


def summary_lines(result: Any) -> list[str]:
    objective, outputs = result.objective, result.outputs
    rows: list[tuple[str, str]] = [
        ("stages", ", ".join(result.stages)),
        ("objective", f"{objective.metric} ({objective.direction})"),
    ]
    if "prepare" in outputs:
        rows.append(("data", _data_line(outputs["prepare"])))
    if "tune" in outputs:
        tuned = outputs["tune"]
        trials = f"{sum(tuned.counts.values())} trials {tuned.counts}"
        rows.append(("tuning", f"{trials}, best val {objective.metric} {tuned.best_value:.4f}"))
        rows += [(f"  {k}", _short(v)) for k, v in tuned.best_values.items()]
    if "train" in outputs:
        trained = outputs["train"]
        rows.append(
            (
                "train",
                f"params from {trained.params_source}, best epoch {trained.best_epoch + 1}/{len(trained.history)}, "
                f"val {objective.metric} {trained.best_score:.4f}, {trained.seconds:.1f}s",
            )
        )
    if "evaluate" in outputs:
        evaluation = outputs["evaluate"]
        shown = [k for k in TEST_METRICS if k in evaluation.metrics]
        rows.append(("test", ", ".join(f"{k} {evaluation.metrics[k]:.4f}" for k in shown)))
        for row in evaluation.baselines:
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
