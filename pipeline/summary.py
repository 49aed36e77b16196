"""The short table printed at the end of a run."""

from __future__ import annotations

from typing import Any

from pipeline.ensemble import ENSEMBLE, describe

TEST_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss", "rmse", "mae", "r2")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _data_line(prepared: Any) -> str:
    inferred = " (inferred)" if prepared.card.get("task_inferred") and prepared.name == "table" else ""
    return (
        f"{prepared.name}: {prepared.task}{inferred}, {prepared.card['rows_used']} rows, "
        f"{prepared.features['train'].shape[1]} features"
    )


def _families(result: Any) -> list[tuple[str, str]]:
    """One line per family (and the floor): validation and test objective, the winner marked."""
    evaluation, metric = result.outputs["evaluate"], result.objective.metric
    bases = ["cv", "val", "test"] if evaluation.selected_on == "cv" else ["val", "test"]
    rows = [("families", " / ".join(f"{b} {metric}" for b in bases))]
    for row in evaluation.rows:
        mark = "   <- winner" if row["model"] == evaluation.winner else ""
        scores = [row.get(f"{b}_{metric}") for b in bases]
        shown = " / ".join("-" if v is None or v != v else f"{v:.4f}" for v in scores)
        rows.append((f"  {row['model']}", f"{shown}{mark}"))
    return rows


def _winner_lines(result: Any) -> list[tuple[str, str]]:
    """The winner, and where each of its tuned or overridden values came from."""
    evaluation = result.outputs["evaluate"]
    winner = evaluation.winner
    trained = result.outputs.get("train", {}).get(winner)
    if winner == ENSEMBLE:
        return [("winner", f"ensemble of {describe(evaluation.ensemble)} (weights)")]
    if trained is None:
        return [("winner", winner)]
    tune_run = result.runs.get(f"tune.{winner}")
    origin = f"tune run {tune_run.run_id[:8]}" if tune_run is not None and tune_run.run_id else "tune"
    rows = [("winner", f"{winner} (params from {trained.params_source})")]
    rows += [(f"  {k}", f"{_short(v)} ({origin})") for k, v in trained.applied_values.items()]
    rows += [(f"  {k}", f"{_short(v)} (command line)") for k, v in trained.overridden.items()]
    return rows


def _tuning(result: Any) -> list[tuple[str, str]]:
    metric, rows = result.objective.metric, []
    for family, tuned in result.outputs["tune"].items():
        took = result.stage_seconds.get(f"tune.{family}")
        line = f"{tuned.describe_trials()}, best val {metric} {tuned.best_value:.4f}"
        rows.append((f"tune {family}", line + (f", {took:.1f}s" if took is not None else "")))
    return rows


def _training(result: Any) -> list[tuple[str, str]]:
    metric, rows = result.objective.metric, []
    for family, trained in result.outputs["train"].items():
        step = "epoch" if family == "network" else "step"
        rows.append(
            (
                f"train {family}",
                f"params from {trained.params_source}, best {step} {trained.best_epoch + 1}/{len(trained.history)}, "
                f"val {metric} {trained.best_score:.4f}"
                + (f", refit on train+val ({trained.fit_rows} rows)" if trained.refit else "")
                + (", out-of-fold fits" if getattr(trained, "oof_predictions", None) is not None else "")
                + f", {trained.seconds:.1f}s",
            )
        )
    return rows


def summary_lines(result: Any) -> list[str]:
    objective, outputs = result.objective, result.outputs
    rows: list[tuple[str, str]] = [
        ("stages", ", ".join(result.stages)),
        ("objective", f"{objective.metric} ({objective.direction})"),
    ]
    if "prepare" in outputs:
        rows.append(("data", _data_line(outputs["prepare"])))
    if "tune" in result.stages:
        rows += _tuning(result)
    if "train" in result.stages:
        rows += _training(result)
    if "evaluate" in outputs:
        evaluation = outputs["evaluate"]
        rows += _families(result)
        rows += _winner_lines(result)
        shown = [k for k in TEST_METRICS if k in evaluation.metrics]
        rows.append(("test", ", ".join(f"{k} {evaluation.metrics[k]:.4f}" for k in shown)))
        rows.append(("verdict", evaluation.verdict))
    if "register" in outputs:
        rows.append(("registry", outputs["register"].line()))
    if result.parent_run_id:
        rows.append(("run", f"{result.parent_run_id}   (make reproduce RUN={result.parent_run_id})"))
    if result.link:
        rows.append(("runs", f"{result.link}   {result.link_note}".rstrip()))
    rows.append(("time", f"{result.seconds:.1f}s"))
    width = max(len(k) for k, _ in rows)
    return [f"{k.ljust(width)}  {v}" for k, v in rows]
