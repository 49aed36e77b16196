"""The run report: one self-contained HTML page per pipeline run (images inline, no remote script,
style or font, readable printed), logged as `report.html` to the parent run. `make report` prints
the path of the newest run's report (`RUN=<id>` for another run).

    python -m pipeline.report [RUN_ID] [overrides]
"""

from __future__ import annotations

import base64
import html
import io
import sys
from pathlib import Path
from typing import Any

from pipeline.ensemble import ENSEMBLE, describe

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 78rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; border-bottom: 1px solid #ccc; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
td, th { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; }
.winner { font-weight: bold; } .headline { font-size: 1.05rem; background: #f4f6f8; padding: .75rem; }
img { max-width: 100%; page-break-inside: avoid; } pre { background: #f4f6f8; padding: .5rem;
white-space: pre-wrap; word-break: break-all; font-size: .8rem; }
.row { display: flex; flex-wrap: wrap; gap: 1.25rem; align-items: flex-start; }
@media print { h2 { page-break-after: avoid; } }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _image(figure: Any) -> str:
    """A figure (closed afterwards), or a PNG drawn already, as an inline image; nothing for None."""
    if figure is None:
        return ""
    if isinstance(figure, bytes):
        png = figure
    else:
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        plt.close(figure)
        png = buffer.getvalue()
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _side_by_side(*parts: str) -> str:
    return '<div class="row">' + "".join(f"<div>{p}</div>" for p in parts if p) + "</div>"


def _columns(rows: list[list[Any]], most: int) -> list[list[list[Any]]]:
    """Long tables split into up to `most` side-by-side chunks, so the page stays short."""
    size = max(12, -(-len(rows) // most))
    return [rows[i : i + size] for i in range(0, len(rows), size)] or [[]]


def _sizes(sizes: dict[str, int]) -> str:
    return ", ".join(f"{split} {n}" for split, n in sizes.items())


def _section(title: str, *parts: str) -> str:
    anchor = "-".join(title.lower().replace(",", "").split())
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{"".join(p for p in parts if p)}</section>'


def headline(result: Any) -> str:
    outputs, prepared = result.outputs, result.outputs.get("prepare")
    what = f"{prepared.name} ({prepared.task}, {prepared.card['rows_used']} rows)" if prepared else "the data"
    parts = [f"Stages {', '.join(result.stages)} on {what}, judged by {result.objective.metric}."]
    if "evaluate" in outputs:
        verdict = outputs["evaluate"].verdict
        parts.append(f"Winner: <b>{_e(outputs['evaluate'].winner)}</b>: {_e(verdict)}.")
    if "register" in outputs:
        d = outputs["register"]
        parts.append(f"Registered <b>{_e(d.model_name)} v{_e(d.version)}</b> as <b>{_e(d.alias)}</b>.")
    return '<p class="headline">' + " ".join(parts) + "</p>"


def data_section(prepared: Any) -> str:
    card = prepared.card
    features = [[c, f["type"], f"{f['missing_share']:.1%}"] for c, f in card["features"].items()]
    balance = card.get("class_balance") or card.get("target_summary") or {}
    dropped = [[c, why] for c, why in card["dropped_columns"].items()]
    return _section(
        "Data",
        f"<p>{card['rows']} rows ({card['rows_used']} used), {card['columns']} columns; target "
        f"<code>{_e(card['target'])}</code>, {_e(card['task'])}; splits {_e(_sizes(card['split_sizes']))} "
        f"({_e(card['split_strategy'])}).</p>",
        _side_by_side(
            *[_table(["feature", "type", "missing"], chunk) for chunk in _columns(features, 3)],
            _table(
                ["class" if "class_balance" in card else "target", "value"],
                [[k, v] for k, v in balance.items()],
            ),
        ),
        _table(["dropped column", "why"], dropped) if dropped else "<p>No column was dropped.</p>",
        "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in card["warnings"]) + "</ul>" if card["warnings"] else "",
    )


def search_section(tuned_by_family: dict[str, Any], maximize: bool, draw: bool = True) -> str:
    parts = []
    for family, tuned in tuned_by_family.items():
        params = [[k, v] for k, v in tuned.best_values.items()]
        importances = [[k, v] for k, v in sorted(tuned.importances.items(), key=lambda kv: -kv[1])]
        history = tuned.figures.get("optimization_history.png")  # the tune stage's, when it drew it
        if history is None and draw:
            from pipeline import plots

            history = plots.search_history(tuned.trials, maximize, f"{family}: validation value per trial")
        parts += [
            f"<h3>{_e(family)}</h3><p>{_e(tuned.describe_trials())}; best value "
            f"{tuned.best_value:.4g} (trial {tuned.best_trial}).</p>",
            _side_by_side(
                _image(history),
                _table(["best parameter", "value"], params),
                _table(["parameter", "importance"], importances) if importances else "",
            ),
        ]
    return _section("The search, per family", *parts)


def model_section(result: Any, draw: bool = True) -> str:
    evaluation, trained = result.outputs.get("evaluate"), result.outputs.get("train", {})
    winner = evaluation.winner if evaluation else next(iter(trained), None)
    if evaluation is not None and winner == ENSEMBLE:
        return _section(
            "The final model",
            f"<p>The ensemble of {_e(describe(evaluation.ensemble))} (weights chosen on "
            f"{'out-of-fold predictions' if evaluation.selected_on == 'cv' else 'validation'}): "
            "each member's learning curve is in its train run.</p>",
        )
    if winner is None or winner not in trained:
        return ""
    model, metric = trained[winner], result.objective.metric
    # the train stage's PNG when this invocation drew it; drawn here for a train run reused
    curve = model.figures.get("learning_curve.png")
    if curve is None and draw:
        from pipeline import plots

        curve = plots.learning_curve(model.history, f"val_{metric}", model.best_epoch)
    return _section(
        "The final model",
        f"<p>{_e(winner)}, params from {_e(model.params_source)}; best {'epoch' if winner == 'network' else 'step'} "
        f"{model.best_epoch + 1} of {len(model.history)}, val {metric} {model.best_score:.4f}"
        + (f"; then refit for that many on train and val ({model.fit_rows} rows)" if model.refit else "")
        + ".</p>",
        _image(curve),
    )


def evaluation_section(evaluation: Any, draw: bool = True) -> str:
    frame = evaluation.table()
    columns = ["model"] + [c for c in frame.columns if c.startswith(("cv_", "val_", "test_"))]
    rows = [[("★ " if r["model"] == evaluation.winner else "") + str(r["model"]), *[r.get(c) for c in columns[1:]]]
            for r in evaluation.rows]  # fmt: skip
    comparisons = [[c["other"], c["difference"], f"[{c['interval'][0]:+.4f}, {c['interval'][1]:+.4f}]"]
                   for c in evaluation.comparisons]  # fmt: skip
    figures = "".join(_image(f) for f in evaluation.figures.values())
    return _section(
        "Evaluation",
        _table([c.replace("_", " ") for c in columns], rows),  # spaces let long metric names wrap
        _table(
            [f"{evaluation.winner} against", f"difference in test {evaluation.objective}", "95% interval"],
            comparisons,
        ),
        f"<p><b>Verdict:</b> {_e(evaluation.verdict)}</p>",
        *[f"<p>{_e(note)}</p>" for note in evaluation.notes],
        figures
        or (
            "<p>The plots are in the evaluate run's artifacts.</p>"
            if draw
            else "<p>No plots were drawn (tracking.plots=false).</p>"
        ),
    )


def gate_section(decision: Any) -> str:
    rows = [
        ["registered", f"{decision.model_name} v{decision.version} ({decision.family})"],
        ["alias", decision.alias],
        ["champion before", f"v{decision.champion_version}" if decision.champion_version else "none"],
        ["its score, rescored now", decision.champion_score],
        [f"new test {decision.objective}", decision.new_score],
        ["reason", decision.reason],
    ]
    return _section("The gate", _table(["", ""], rows))


def usage_section(prepared: Any, decision: Any, port: int) -> str:
    from pipeline.model_card import curl_line

    name = f' ARGS="registry.model_name={decision.model_name}"' if decision else ""
    lines = [
        f"make serve{name}",
        curl_line(prepared, port),
        "make predict INPUT=rows.csv OUTPUT=predictions.csv",
    ]
    return _section("How to use the model", f"<pre>{_e(chr(10).join(lines))}</pre>")


def reproducibility_section(result: Any, git: dict[str, str], config_digest: str, seed: int) -> str:
    from pipeline.tracking.provenance import package_versions

    rows = [
        ["commit", f"{git.get('commit', '?')} ({'dirty' if git.get('dirty') == 'true' else 'clean'})"],
        ["config digest", config_digest],
        ["seed", seed],
        *[[name, version] for name, version in package_versions().items()],
    ]
    return _section(
        "Reproducibility", _table(["", ""], rows), f"<pre>make reproduce RUN={_e(result.parent_run_id)}</pre>"
    )


def build_report(
    result: Any, git: dict[str, str], config_digest: str, seed: int, port: int, draw: bool = True
) -> str:
    """The page for a finished invocation; sections for the stages it ran or used. `draw`: draw
    the figures a stage did not (tracking.plots); false shows only those drawn already."""
    outputs = result.outputs
    parts = [headline(result)]
    if "prepare" in outputs:
        parts.append(data_section(outputs["prepare"]))
    if outputs.get("tune"):
        parts.append(search_section(outputs["tune"], result.objective.maximize, draw))
    parts.append(model_section(result, draw))
    if "evaluate" in outputs:
        parts.append(evaluation_section(outputs["evaluate"], draw))
    if "register" in outputs:
        parts.append(gate_section(outputs["register"]))
    if "prepare" in outputs:
        parts.append(usage_section(outputs["prepare"], outputs.get("register"), port))
    parts.append(reproducibility_section(result, git, config_digest, seed))
    title = f"Pipeline run {result.parent_run_id}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>{''.join(parts)}</body></html>"
    )


def main(argv: list[str] | None = None) -> None:
    """Print the local path of a pipeline run's report (the newest finished one by default)."""
    import argparse

    from pipeline.errors import PipelineError

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", nargs="?", default="", help="a pipeline run id (default: the newest)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. tracking.uri=...")
    args = parser.parse_args(argv)
    from pipeline.console import quiet_libraries

    quiet_libraries()
    try:
        print(fetch_report(args.run, args.overrides))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)


def fetch_report(run_id: str, overrides: list[str]) -> Path:
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.config.overrides import compose_checked
    from pipeline.errors import PipelineError
    from pipeline.tracking.store import tracking_uri

    if "=" in run_id:  # an override given without a run
        overrides, run_id = [run_id, *overrides], ""
    cfg = compose_checked(overrides)
    mlflow.set_tracking_uri(tracking_uri(cfg.tracking.uri))
    client = MlflowClient()
    if not run_id:
        found = client.get_experiment_by_name(cfg.tracking.experiment)
        runs = client.search_runs(
            [found.experiment_id], "tags.stage = 'pipeline' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1,
        ) if found else []  # fmt: skip
        if not runs:
            raise PipelineError("no finished pipeline run yet: run make pipeline first")
        run_id = runs[0].info.run_id
    target = Path("reports") / run_id
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="report.html", dst_path=str(target)
        )
    except Exception:  # noqa: BLE001 - no such run, or a run without a report
        raise PipelineError(
            f"run {run_id} has no report.html (a pipeline run logs one when it finishes)"
        ) from None
    return Path(local).resolve()


if __name__ == "__main__":
    from pipeline.shutdown import run_then_exit

    run_then_exit(main)  # without the seconds of module teardown at exit
