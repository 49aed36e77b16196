"""The network family on tables: the tabular network against the MLP, tuned trees and FLAML.

The tabular network (model=tabular, what data=table gets) against the MLP, the best tree family
and FLAML, at one wall-time budget, on the classification tables of bench/automl.py (each split
80/20 several times; the 20% test rows untouched by every system).

Per table and resplit, each system fits the same 80% rows as a user runs it:
- tabular: `python -m pipeline data=table candidates=[network]` with its defaults; its wall time W
  is the budget of the others;
- mlp: the same with `model=mlp`;
- trees: `candidates=[hist_gradient_boosting,random_forest]`, each family's study given half of
  the tabular network's tuning time (`tune.timeout`; trials without limit), the better family
  registered as the pipeline chooses it (out-of-fold), not an ensemble of the two
  (`evaluate.ensemble_rounds=0`): the measure is the best tree family;
- FLAML: `time_budget` = W.
The registered champion scores the test rows (`make predict`). Reported per table: mean test
ROC-AUC of each, the tabular network minus the best tree family with a paired bootstrap interval
over the test rows of all resplits, and the cost of the networks: CPU seconds per epoch of the
final fit and per tuning trial (one thread).

    python -m bench.tabular_network [--half first|second] [--tables OJ,Default] [--resplits 2]
        [--tabular "model.numeric_embedding=none"]
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.automl import HALVES, TABLES, load, positive_label, resplit, run_flaml, run_pipeline, score
from bench.common import Report, markdown_table, parser, quiet

SYSTEMS = ("tabular", "mlp", "trees", "flaml")
TREES = ["candidates=[hist_gradient_boosting,random_forest]", "evaluate.ensemble_rounds=0"]


def _line(stdout: str, stage: str) -> str:
    """A stage's line of the summary (not its progress lines, which say `stage:`)."""
    return next(x for x in stdout.splitlines() if re.match(rf"{stage}\s{{2,}}", x))


def _seconds(stdout: str, stage: str) -> float:
    """A stage's wall seconds from the summary line ('..., 12.3s')."""
    return float(re.search(r"([0-9.]+)s$", _line(stdout, stage)).group(1))


def _costs(stdout: str) -> dict[str, float]:
    """Seconds per epoch of the final fit and per trial of the search, from the summary."""
    epochs = int(re.search(r"best epoch \d+/(\d+)", _line(stdout, "train network")).group(1))
    trials = int(re.search(r"(\d+) trials", _line(stdout, "tune network")).group(1))
    return {
        "epoch_seconds": _seconds(stdout, "train network") / epochs,
        "trial_seconds": _seconds(stdout, "tune network") / trials,
        "tune_seconds": _seconds(stdout, "tune network"),
    }


def one_split(table: Any, seed: int, flaml: bool, variant: list[str]) -> dict[str, Any]:
    frame = load(table)
    train, test = resplit(frame, table, seed)
    positive = positive_label(train, table)
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "tabular": ["candidates=[network]", "train.threads=1", *variant],
            "mlp": ["candidates=[network]", "model=mlp", "train.threads=1"],
        }
        for name, overrides in runs.items():
            (Path(tmp) / name).mkdir()
            found[name] = run_pipeline(table, train, test, seed, Path(tmp) / name, overrides)
            found[name] |= _costs(found[name]["stdout"])
        per_family = max(5.0, found["tabular"]["tune_seconds"] / 2)
        (Path(tmp) / "trees").mkdir()
        found["trees"] = run_pipeline(
            table, train, test, seed, Path(tmp) / "trees",
            [*TREES, f"tune.timeout={per_family:.0f}", "tune.n_trials=100000", "train.threads=1"],
        )  # fmt: skip
    if flaml:
        found["flaml"] = run_flaml(table, train, test, seed, found["tabular"]["seconds"])
    row = {"resplit": seed, "y": test[table.target], "positive": positive}
    for name, got in found.items():
        row[name] = score(table, test[table.target], got["predicted"], positive)
        row[f"{name}_seconds"] = got["seconds"]
        row[f"{name}_predicted"] = got["predicted"]
        row[f"{name}_winner"] = got["winner"]
    for name in ("tabular", "mlp"):
        row[f"{name}_epoch_seconds"] = found[name]["epoch_seconds"]
        row[f"{name}_trial_seconds"] = found[name]["trial_seconds"]
    shown = {k: v for k, v in row.items() if not k.endswith("_predicted") and k not in ("y", "positive")}
    print(f"  {table.name} resplit {seed}: {json.dumps(shown, default=str)}", flush=True)
    return row


def paired(table: Any, rows: list[dict[str, Any]], a: str, b: str, resamples: int = 1000) -> tuple:
    """Mean over resplits of (a - b) test ROC-AUC, its 95% interval resampling test rows, and
    the resampled means (the tables' draws, averaged draw by draw, give the mean's interval)."""
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(resamples):
        differences = []
        for r in rows:
            idx = rng.integers(0, len(r["y"]), len(r["y"]))
            y = r["y"].iloc[idx].reset_index(drop=True)
            differences.append(
                score(table, y, r[f"{a}_predicted"][idx], r["positive"])
                - score(table, y, r[f"{b}_predicted"][idx], r["positive"])
            )
        draws.append(np.mean(differences))
    low, high = np.quantile(draws, [0.025, 0.975])
    return float(np.mean([r[a] - r[b] for r in rows])), float(low), float(high), np.asarray(draws)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tables", default="", help="comma-separated table names (default: classification)")
    p.add_argument("--half", choices=sorted(HALVES), help="only one half of the classification tables")
    p.add_argument("--resplits", type=int, default=2)
    p.add_argument("--skip-flaml", action="store_true")
    p.add_argument(
        "--tabular",
        default="",
        help="overrides of the tabular network's run, space-separated, to measure a variant "
        "(e.g. 'model.numeric_embedding=none model.members=4')",
    )
    args = p.parse_args(argv)
    quiet(mlflow=True)
    chosen = [t for t in TABLES if t.task == "classification"]
    chosen = [t for t in chosen if not args.tables or t.name in args.tables.split(",")]
    if args.half:
        chosen = [t for t in chosen if t.name in HALVES[args.half]]
    resplits = 1 if args.quick else args.resplits
    chosen = chosen[:1] if args.quick else chosen
    variant = args.tabular.split()
    # a variant's results land beside the defaults' rather than over them
    name = f"tabular_network{'_' + args.half if args.half else ''}{'_variant' if variant else ''}"
    report = Report(name, __doc__.splitlines()[0], args.quick)
    report.settings.update({"resplits": resplits, "tables": [t.name for t in chosen], "tabular": variant})
    rows, gaps = [], []
    for table in chosen:
        found = [one_split(table, seed, not args.skip_flaml, variant) for seed in range(resplits)]
        gap = paired(table, found, "tabular", "trees")
        gaps.append(gap)
        mean = {s: float(np.mean([r[s] for r in found])) for s in SYSTEMS if s in found[0]}
        rows.append(
            [table.name, *(mean.get(s) for s in SYSTEMS), *gap[:3],
             np.mean([r["tabular_seconds"] for r in found]),
             np.mean([r["tabular_epoch_seconds"] / r["mlp_epoch_seconds"] for r in found]),
             np.mean([r["tabular_trial_seconds"] / r["mlp_trial_seconds"] for r in found]),
             ",".join(r["trees_winner"] for r in found)]
        )  # fmt: skip
    headers = ["table", "tabular", "mlp", "best tree", "FLAML", "tabular - tree", "low", "high",
               "wall s (budget)", "epoch cost vs mlp", "trial cost vs mlp", "tree chosen"]  # fmt: skip
    report.section("test ROC-AUC, mean over resplits", markdown_table(headers, rows))
    mean_gap = float(np.mean([g[0] for g in gaps]))
    worst = min(g[0] for g in gaps)
    # the tables' test rows are disjoint, so averaging their resampled gaps draw by draw
    # resamples the mean over tables
    low, high = np.quantile(np.mean([g[3] for g in gaps], axis=0), [0.025, 0.975])
    report.headline(
        "mean test ROC-AUC, tabular network - best tree family", mean_gap, ">= -0.005", mean_gap >= -0.005
    )
    report.headline("  its 95% interval (paired, resampling the test rows)", f"[{low:+.4f}, {high:+.4f}]")
    report.headline("worst table, tabular network - best tree family", worst, ">= -0.02", worst >= -0.02)
    report.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
