"""Tuning: what pruning saves, and what parallel workers buy, on the real tune stage.

Pruning: the same search (seed, sampler, space, number of trials, epoch budget) with
tune.pruner=none, median and hyperband: epochs trained in total (the sum over trials of the
epochs each reported), wall time of the tune stage and the best validation objective found.
Early stopping is switched off so that the epochs saved are the pruner's alone.

Parallelism: trials per minute with tune.n_jobs=2 against 1, no pruning: one worker with 1
thread and with every core, two workers with train.threads unset (the stage gives each
cores // n_jobs threads), and (full run only) two workers with train.threads set to the cores.

Every configuration runs `run_pipeline(stages=[prepare,tune])` with tracking on, in a fresh
temporary SQLite store with its own journal-file study.

    python -m bench.tuning [--quick] [--repeats N] [--trials N] [--epochs N] [--data NAME]
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from itertools import count
from pathlib import Path
from typing import Any

from bench.common import Report, compose, fresh_store, markdown_table, median, parser, quiet, spread

PRUNERS = ("none", "median", "hyperband")


def run_search(
    root: Path,
    label: str,
    data: str,
    trials: int,
    epochs: int,
    pruner: str,
    n_jobs: int,
    threads: int | None,
    seed: int = 42,
) -> dict[str, Any]:
    import optuna
    from mlflow.tracking import MlflowClient

    from pipeline.runner import run_pipeline
    from pipeline.stages.tune import make_storage

    label = label.replace("=", "")  # a Hydra override value cannot hold '='
    folder = root / label
    journal = folder / "study.journal"
    uri = fresh_store(folder)
    cfg = compose(
        "stages=[prepare,tune]",
        f"data={data}",
        f"seed={seed}",
        f"tracking.uri={uri}",
        "tracking.experiment=bench-tuning",
        f"tune.storage={journal}",
        f"tune.study_name=bench-{label}",
        f"tune.n_trials={trials}",
        f"tune.epochs={epochs}",
        f"tune.pruner={pruner}",
        "tune.sampler=tpe",
        f"tune.n_jobs={n_jobs}",
        f"train.threads={'null' if threads is None else threads}",
        "train.device=cpu",
        "train.early_stopping.patience=1000000",
    )
    started = time.perf_counter()
    result = run_pipeline(cfg)
    invocation = time.perf_counter() - started
    run = MlflowClient().get_run(result.run_ids["tune"]).info
    study = optuna.load_study(study_name=f"bench-{label}", storage=make_storage(str(journal), 10))
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    starts = [t.datetime_start for t in done if t.datetime_start]
    ends = [t.datetime_complete for t in done if t.datetime_complete]
    return {
        "stage_seconds": (run.end_time - run.start_time) / 1000.0,
        "search_seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan"),
        "invocation_seconds": invocation,
        "epochs": sum(len(t.intermediate_values) for t in done),
        "trials": len(done),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
        "best": result.outputs["tune"].best_value,
        "metric": result.objective.metric,
    }


def rounds(
    variants: dict[str, dict[str, Any]], repeats: int, root: Path, common: dict[str, Any]
) -> dict[str, list]:
    """Alternate the configurations (rotating order), a fresh store and study every time."""
    numbers = count()
    names = list(variants)
    results: dict[str, list] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            out = run_search(root, f"{name}-{next(numbers)}", **common, **variants[name])
            results[name].append(out)
            print(
                f"  round {round_ + 1}/{repeats} {name}: stage {out['stage_seconds']:.1f}s, "
                f"{out['trials']} trials ({out['pruned']} pruned), {out['epochs']} epochs, "
                f"best {out['best']:.4f}",
                flush=True,
            )
    return results


def parallel(
    report: Report,
    root: Path,
    common: dict[str, Any],
    trials: int,
    epochs: int,
    data: str,
    repeats: int,
    cores: int,
    quick: bool,
) -> None:
    """Trials per minute with one worker process against two, without pruning."""
    variants = {
        # one process, torch threads pinned to 1 or to every core (torch's own default here)
        "1 worker x 1 thread": {"n_jobs": 1, "threads": 1},
        f"1 worker x {cores} threads": {"n_jobs": 1, "threads": cores},
        # train.threads unset: the stage gives each worker cores // n_jobs threads
        f"2 workers x {max(1, cores // 2)} thread(s)": {"n_jobs": 2, "threads": None},
    }
    if not quick:
        # train.threads set explicitly: what each worker then really uses
        variants[f"2 workers, train.threads={cores}"] = {"n_jobs": 2, "threads": cores}
    if quick:
        del variants["1 worker x 1 thread"]
    print(f"\nparallelism: {trials} trials x {epochs} epochs on {data}, no pruning", flush=True)
    labels = {name: re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") for name in variants}
    found = rounds({labels[n]: {"pruner": "none", **v} for n, v in variants.items()}, repeats, root, common)
    rows, rate = [], {}
    for name in variants:
        runs = found[labels[name]]
        seconds = [r["stage_seconds"] for r in runs]
        rate[name] = 60.0 * trials / median(seconds)
        search_rate = 60.0 * trials / median([r["search_seconds"] for r in runs])
        rows.append(
            [
                name,
                median(seconds),
                spread(seconds),
                rate[name],
                search_rate,
                median([r["best"] for r in runs]),
            ]
        )
    report.section(
        f"Parallel workers ({data}, {trials} trials x {epochs} epochs, no pruning)",
        "Trials per minute from the tune stage's wall time (worker start-up included) and from the "
        "trials' own start and end times (search only). With train.threads unset the stage gives "
        f"each of its n_jobs workers cores // n_jobs threads. Median of {repeats} alternating "
        "repeat(s).\n\n"
        + markdown_table(
            [
                "configuration",
                "tune stage s",
                "range",
                "trials/min (stage)",
                "trials/min (search only)",
                "best val",
            ],
            rows,
        ),
    )
    two = f"2 workers x {max(1, cores // 2)} thread(s)"
    for one in (f"1 worker x {cores} threads", "1 worker x 1 thread"):
        if one in rate:
            speedup = rate[two] / rate[one]
            report.headline(
                f"trials/min, n_jobs=2 / n_jobs=1 ({two} vs {one})",
                round(speedup, 3),
                f"> 1 (ideal {cores})",
                speedup > 1,
            )
    explicit = f"2 workers, train.threads={cores}"
    if explicit in rate:
        report.headline(
            f"trials/min, n_jobs=2 with train.threads={cores} / without",
            round(rate[explicit] / rate[two], 3),
            "~1",
            rate[explicit] / rate[two] > 0.8,
        )


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="trials per search (default 16, --quick 6)")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget per trial (default 20, --quick 5)")
    p.add_argument("--data", default=None, help="data set (default digits, --quick breast_cancer)")
    p.add_argument("--skip", choices=("pruning", "parallel"), default=None, help="leave one part out")
    args = p.parse_args()
    quiet(mlflow=True)
    repeats = args.repeats or (1 if args.quick else 3)
    trials = args.trials or (6 if args.quick else 16)
    epochs = args.epochs or (5 if args.quick else 20)
    data = args.data or ("breast_cancer" if args.quick else "digits")
    cores = os.cpu_count() or 1
    report = Report(
        "tuning",
        "Tuning: pruners and parallel workers",
        args.quick,
        {
            "data": data,
            "trials": trials,
            "epochs_per_trial": epochs,
            "repeats": repeats,
            "sampler": "tpe",
            "seed": 42,
            "threads_pruning": args.threads,
            "threads_parallel_total": cores,
        },
    )
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        root = Path(tmp)
        common = {"data": data, "trials": trials, "epochs": epochs}
        print("warm-up search (untimed)", flush=True)
        run_search(root, "warmup", data, 2, 1, "none", 1, args.threads)

        if args.skip != "pruning":
            print(f"\npruning: {trials} trials x {epochs} epochs on {data}", flush=True)
            found = rounds(
                {name: {"pruner": name, "n_jobs": 1, "threads": args.threads} for name in PRUNERS},
                repeats,
                root,
                common,
            )
            budget = trials * epochs
            base = median([r["stage_seconds"] for r in found["none"]])
            rows = []
            for name, runs in found.items():
                seconds = [r["stage_seconds"] for r in runs]
                rows.append(
                    [
                        name,
                        median([r["epochs"] for r in runs]),
                        median([r["epochs"] for r in runs]) / budget,
                        median([r["pruned"] for r in runs]),
                        median(seconds),
                        spread(seconds),
                        median(seconds) / base,
                        median([r["best"] for r in runs]),
                    ]
                )
            metric = found["none"][0]["metric"]
            report.section(
                f"Pruning ({data}, {trials} trials x {epochs} epochs, tpe, seed 42)",
                f"Budget without pruning: {budget} epochs. Median of {repeats} alternating "
                "repeat(s); the search is seeded, so epochs and best value repeat exactly while "
                "times vary.\n\n"
                + markdown_table(
                    [
                        "pruner",
                        "epochs trained",
                        "share of budget",
                        "pruned trials",
                        "tune stage s",
                        "range",
                        "time vs none",
                        f"best val {metric}",
                    ],
                    rows,
                ),
            )
            best_none = median([r["best"] for r in found["none"]])
            for name in ("median", "hyperband"):
                runs = found[name]
                share = median([r["epochs"] for r in runs]) / budget
                report.headline(
                    f"{name} pruner: epochs trained / no pruning", round(share, 3), "< 1", share < 1
                )
                report.headline(
                    f"{name} pruner: tune time / no pruning",
                    round(median([r["stage_seconds"] for r in runs]) / base, 3),
                    "info",
                    None,
                )
                report.headline(
                    f"{name} pruner: best val {metric} (none: {best_none:.4f})",
                    round(median([r["best"] for r in runs]), 4),
                    "info",
                    None,
                )

        if args.skip != "parallel":
            parallel(report, root, common, trials, epochs, data, repeats, cores, args.quick)
    if repeats < 3:
        report.note(f"only {repeats} repeat(s) per configuration: times are indicative only")
    report.write()


if __name__ == "__main__":
    main()
