"""Tuning: what pruning saves, and what parallel workers buy, on the real tune stage.

Pruning: the same search (seed, sampler, space, number of trials, epoch budget) with
tune.pruner=none, median and hyperband (each with its default settings): epochs trained in total
(the sum over trials of the epochs each reported), wall time of the tune stage and the best
validation objective found. Early stopping is switched off so that the epochs saved are the
pruner's alone. The target: pruning at least halves the epochs for a best value within
--tolerance of no pruning. One seed is one draw of a noisy search: --seeds runs the same
comparison with more seeds (one repeat each) and --larger adds a study with more trials.

Parallelism: trials per minute with tune.n_jobs=2 against 1, no pruning, on a study of
--parallel-trials trials of about equal cost, each with the default epoch budget (tune.epochs) (batch size and widths are left out of the space): one worker and two workers with train.threads unset (what a user gets
without the flag: one thread for data this small, cores // n_jobs threads per worker), and one
worker with every core. Each runs as the command line (`python -m pipeline ...`, what
`make sweep` runs) in a fresh process, so a worker's start-up counts as it does for a user.

Every configuration runs the stages prepare and tune with tracking on, in a fresh temporary SQLite
store with its own journal-file study; the pruning comparison calls `run_pipeline` in this
process.

    python -m bench.tuning [--quick] [--repeats N] [--trials N] [--epochs N] [--data NAME]
                           [--seeds 42,1,7] [--larger N] [--tolerance X] [--parallel-trials N]
                           [--parallel-epochs N] [--skip pruning|parallel] [--whole-space]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from itertools import count
from pathlib import Path
from typing import Any

from bench.common import ROOT, Report, compose, fresh_store, markdown_table, median, parser, quiet, spread

PRUNERS = ("none", "median", "hyperband")
# The parallel comparison searches the default space without the batch size and the layer widths:
# those change a trial's cost several times over, and one worker and two sample different points,
# so with them the two configurations would train different amounts of work.
EQUAL_COST_TRIALS = ("~tune.space.network.train.batch_size", "~tune.space.network.model.hidden")


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
    fresh_process: bool = False,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One search. In this process by default; with `fresh_process` as the command line
    `python -m pipeline ...` that `make sweep` runs, so the search pays the start-up a user pays
    (imports, torch's first optimizer, opening the store) in every process it uses."""
    import optuna
    from mlflow.tracking import MlflowClient

    from pipeline.tuning.study import make_storage

    label = label.replace("=", "")  # a Hydra override value cannot hold '='
    folder = root / label
    journal = folder / "study.journal"
    uri = fresh_store(folder)
    overrides = [
        *overrides,
        "stages=[prepare,tune]",
        "candidates=[network]",
        "objective.metric=accuracy",
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
    ]
    started = time.perf_counter()
    if fresh_process:
        command = [sys.executable, "-m", "pipeline", *overrides, f"hydra.run.dir={folder / 'hydra'}"]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    else:
        from pipeline.runner import run_pipeline

        run_pipeline(compose(*overrides))
    invocation = time.perf_counter() - started
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bench-tuning")
    (tune_run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'tune'")
    study = optuna.load_study(study_name=f"bench-{label}", storage=make_storage(str(journal), 10))
    done_trials = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    starts = [t.datetime_start for t in done_trials if t.datetime_start]
    ends = [t.datetime_complete for t in done_trials if t.datetime_complete]
    return {
        "stage_seconds": (tune_run.info.end_time - tune_run.info.start_time) / 1000.0,
        "search_seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan"),
        "invocation_seconds": invocation,
        "epochs": sum(len(t.intermediate_values) for t in done_trials),
        "trials": len(done_trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in done_trials),
        "best": study.best_value,
        "metric": next(
            k.removeprefix("best_val_") for k in tune_run.data.metrics if k.startswith("best_val_")
        ),
        "maximize": study.direction == optuna.study.StudyDirection.MAXIMIZE,
    }


def rounds(
    variants: dict[str, dict[str, Any]], repeats: int, root: Path, common: dict[str, Any], prefix: str = ""
) -> dict[str, list]:
    """Alternate the configurations (rotating order), a fresh store and study every time.
    `prefix` keeps the folders and study names of another call's runs apart."""
    numbers = count()
    names = list(variants)
    results: dict[str, list] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            out = run_search(root, f"{prefix}{name}-{next(numbers)}", **common, **variants[name])
            results[name].append(out)
            print(
                f"  round {round_ + 1}/{repeats} {prefix}{name}: stage {out['stage_seconds']:.1f}s, "
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
    whole_space: bool = False,
) -> None:
    """Trials per minute with one worker process against two, without pruning."""
    default_one, default_two = "1 worker, default threads", "2 workers, default threads"
    variants = {
        # train.threads unset: one worker takes 1 thread on data this small (what a user gets
        # without a flag); n_jobs workers take cores // n_jobs threads each
        default_one: {"n_jobs": 1, "threads": None},
        f"1 worker x {cores} threads": {"n_jobs": 1, "threads": cores},
        default_two: {"n_jobs": 2, "threads": None},
    }
    space = () if whole_space else EQUAL_COST_TRIALS
    print(f"\nparallelism: {trials} trials x {epochs} epochs on {data}, no pruning", flush=True)
    labels = {name: "par-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") for name in variants}
    found = rounds(
        {
            labels[n]: {"pruner": "none", "fresh_process": True, "overrides": space, **v}
            for n, v in variants.items()
        },
        repeats,
        root,
        common,
    )
    rows, rate, search_rate = [], {}, {}
    for name in variants:
        runs = found[labels[name]]
        seconds = [r["stage_seconds"] for r in runs]
        rate[name] = 60.0 * trials / median(seconds)
        search_rate[name] = 60.0 * trials / median([r["search_seconds"] for r in runs])
        rows.append(
            [
                name,
                median([r["invocation_seconds"] for r in runs]),
                median(seconds),
                spread(seconds),
                rate[name],
                search_rate[name],
                median([r["best"] for r in runs]),
            ]
        )
    report.section(
        f"Parallel workers ({data}, {trials} trials x {epochs} epochs, no pruning)",
        (
            "The whole default search space (--whole-space): trials differ in cost, and one worker "
            "and two sample different points. "
            if whole_space
            else "The default search space without batch size and layer widths (learning rate, "
            "weight decay, dropout and activation vary), so that every trial costs about the same "
            "whichever points the workers sample. "
        )
        + "Each configuration runs as `python -m pipeline stages=[prepare,tune] tune.n_jobs=N ...` "
        "in a fresh process, the command `make sweep` runs, so every process pays the start-up a "
        "user pays. Trials per minute from the tune stage's wall time (its MLflow run) and from the "
        "trials' own first start and last end (search only); the whole command is shown for scale. "
        "Extra workers are spawned as the command starts and warm up while the main process "
        "imports and prepares the data; "
        "what is left of their start-up counts in every figure. Median of "
        f"{repeats} alternating repeat(s).\n\n"
        + markdown_table(
            [
                "configuration",
                "command s",
                "tune stage s",
                "range",
                "trials/min (stage)",
                "trials/min (search only)",
                "best val",
            ],
            rows,
        ),
    )
    stage_target, command_target = (1.8, 1.5) if not quick else (1.0, 1.0)
    for label, rates in (("tune stage", rate), ("search only", search_rate)):
        speedup = rates[default_two] / rates[default_one]
        report.headline(
            f"trials/min ({label}), {default_two} / {default_one}",
            round(speedup, 3),
            f">= {stage_target}",
            speedup >= stage_target,
        )
    commands = {name: median([r["invocation_seconds"] for r in found[labels[name]]]) for name in variants}
    command_speedup = commands[default_one] / commands[default_two]
    report.headline(
        f"whole command, {default_one} / {default_two} (time ratio)",
        round(command_speedup, 3),
        f">= {command_target}",
        command_speedup >= command_target,
    )
    one_all = f"1 worker x {cores} threads"
    report.headline(
        f"trials/min (tune stage), {default_two} / {one_all}",
        round(rate[default_two] / rate[one_all], 3),
        "info",
        None,
    )


def _drop(best_none: float, best: float, maximize: bool) -> float:
    """How much worse than no pruning, in the objective's better direction (positive: worse)."""
    return best_none - best if maximize else best - best_none


def _pruner_table(found: dict[str, list], budget: int) -> tuple[list, float]:
    base = median([r["stage_seconds"] for r in found["none"]])
    best_none = median([r["best"] for r in found["none"]])
    rows = []
    for name, runs in found.items():
        shares = [r["epochs"] / budget for r in runs]
        seconds = [r["stage_seconds"] for r in runs]
        best = median([r["best"] for r in runs])
        rows.append(
            [
                name,
                median([r["epochs"] for r in runs]),
                median(shares),
                spread(shares),
                median([r["pruned"] for r in runs]),
                median(seconds),
                spread(seconds),
                median(seconds) / base,
                best,
                best - best_none,
            ]
        )
    return rows, best_none


PRUNER_COLUMNS = [
    "pruner",
    "epochs trained",
    "share of budget",
    "share range",
    "pruned trials",
    "tune stage s",
    "range",
    "time vs none",
    "best val",
    "vs none",
]


def pruning(
    report: Report,
    root: Path,
    data: str,
    trials: int,
    epochs: int,
    repeats: int,
    threads: int | None,
    seeds: list[int],
    larger: int | None,
    tolerance: float,
    quick: bool,
) -> None:
    """Epochs trained, time and best value with pruner none, median and hyperband."""
    variants = {name: {"pruner": name, "n_jobs": 1, "threads": threads} for name in PRUNERS}
    share_target = 1.0 if quick else 0.5
    print(f"\npruning: {trials} trials x {epochs} epochs on {data}, seed {seeds[0]}", flush=True)
    common = {"data": data, "trials": trials, "epochs": epochs, "seed": seeds[0]}
    found = rounds(variants, repeats, root, common, prefix="prune-")
    budget = trials * epochs
    rows, best_none = _pruner_table(found, budget)
    report.section(
        f"Pruning ({data}, {trials} trials x {epochs} epochs, tpe, seed {seeds[0]})",
        f"Budget without pruning: {budget} epochs. Median of {repeats} alternating repeat(s); none "
        "and median repeat exactly (the search is seeded) while times vary; hyperband assigns each "
        "trial to a bracket by a hash of the study name, which differs per repeat, so its epochs "
        "and best value vary too.\n\n" + markdown_table(PRUNER_COLUMNS, rows),
    )
    maximize = found["none"][0]["maximize"]
    metric = found["none"][0]["metric"]
    for name in ("median", "hyperband"):
        runs = found[name]
        share = median([r["epochs"] for r in runs]) / budget
        best = median([r["best"] for r in runs])
        base = median([r["stage_seconds"] for r in found["none"]])
        report.headline(
            f"{name} pruner: epochs trained / no pruning",
            round(share, 3),
            f"<= {share_target}",
            share <= share_target,
        )
        report.headline(
            f"{name} pruner: tune time / no pruning",
            round(median([r["stage_seconds"] for r in runs]) / base, 3),
            "info",
            None,
        )
        report.headline(
            f"{name} pruner: best val {metric} (none: {best_none:.4f})",
            round(best, 4),
            f"within {tolerance} of none",
            _drop(best_none, best, maximize) <= tolerance,
        )

    if larger:
        print(f"\npruning, a larger study: {larger} trials", flush=True)
        big = rounds(variants, repeats, root, {**common, "trials": larger}, prefix="prune-large-")
        rows, _ = _pruner_table(big, larger * epochs)
        report.section(
            f"Pruning, a larger study ({data}, {larger} trials x {epochs} epochs, tpe, seed {seeds[0]})",
            "Not the benchmark's budget: the same search with more trials, to show the trend. "
            f"Budget without pruning: {larger * epochs} epochs. Median of {repeats} repeat(s).\n\n"
            + markdown_table(PRUNER_COLUMNS, rows),
        )

    if len(seeds) > 1:
        per_seed: dict[str, list[dict[str, Any]]] = {name: [found[name][0]] for name in PRUNERS}
        for seed in seeds[1:]:
            print(f"\npruning, seed {seed}", flush=True)
            more = rounds(variants, 1, root, {**common, "seed": seed}, prefix=f"prune-seed{seed}-")
            for name in PRUNERS:
                per_seed[name].append(more[name][0])
        rows = []
        for name in PRUNERS:
            shares = [r["epochs"] / budget for r in per_seed[name]]
            drops = [
                _drop(none["best"], r["best"], maximize)
                for none, r in zip(per_seed["none"], per_seed[name], strict=True)
            ]
            mean_share, mean_drop = sum(shares) / len(shares), sum(drops) / len(drops)
            rows.append(
                [
                    name,
                    mean_share,
                    spread(shares),
                    f"{sum(x <= share_target for x in shares)}/{len(shares)}",
                    sum(r["best"] for r in per_seed[name]) / len(shares),
                    mean_drop,
                    max(drops),
                    f"{sum(d <= tolerance for d in drops)}/{len(drops)}",
                ]
            )
            if name != "none":
                report.headline(
                    f"{name} pruner, {len(seeds)} seeds: mean epochs trained / no pruning",
                    round(mean_share, 3),
                    f"<= {share_target}",
                    mean_share <= share_target,
                )
                report.headline(
                    f"{name} pruner, {len(seeds)} seeds: mean best val {metric} drop vs none",
                    round(mean_drop, 4),
                    f"<= {tolerance}",
                    mean_drop <= tolerance,
                )
        report.section(
            f"Pruning across seeds ({data}, {trials} trials x {epochs} epochs, seeds "
            f"{', '.join(map(str, seeds))})",
            "One study per seed and pruner (the first seed's from the table above). The drop is no "
            "pruning's best value minus the pruner's, in the objective's better direction "
            f"(positive: worse); within noise means a drop of at most {tolerance}.\n\n"
            + markdown_table(
                [
                    "pruner",
                    "mean share of budget",
                    "range",
                    f"seeds at <= {share_target}",
                    f"mean best val {metric}",
                    "mean drop",
                    "worst drop",
                    "seeds within noise",
                ],
                rows,
            ),
        )


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="trials per search (default 16, --quick 6)")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget per trial (default 20, --quick 5)")
    p.add_argument("--data", default=None, help="data set (default digits, --quick breast_cancer)")
    p.add_argument(
        "--parallel-trials", type=int, default=None, help="trials per parallel search (default 24, --quick 6)"
    )
    p.add_argument(
        "--parallel-epochs",
        type=int,
        default=None,
        help="epoch budget per parallel trial (default: tune.epochs' default, what `make sweep` "
        "trains; --quick 5)",
    )
    p.add_argument("--skip", choices=("pruning", "parallel"), default=None, help="leave one part out")
    p.add_argument(
        "--whole-space",
        action="store_true",
        help="parallel comparison on the whole default space (trials of unequal cost)",
    )
    p.add_argument(
        "--seeds",
        default="42",
        help="comma-separated seeds for the pruning comparison: the first is the benchmark's, "
        "the others add a table across seeds (one repeat each)",
    )
    p.add_argument("--larger", type=int, default=None, help="also compare the pruners on a study of N trials")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="the largest drop of the best value against no pruning counted as noise (default "
        "0.005: about one validation image of digits)",
    )
    args = p.parse_args()
    quiet(mlflow=True)
    repeats = args.repeats or (1 if args.quick else 3)
    trials = args.trials or (6 if args.quick else 16)
    epochs = args.epochs or (5 if args.quick else 20)
    data = args.data or ("breast_cancer" if args.quick else "digits")
    seeds = [int(seed) for seed in args.seeds.split(",")]
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
            "seeds": seeds,
            "larger": args.larger,
            "threads_pruning": args.threads,
            "threads_parallel_total": cores,
        },
    )
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        root = Path(tmp)
        common = {"data": data, "trials": trials, "epochs": epochs, "seed": seeds[0]}
        print("warm-up search (untimed)", flush=True)
        run_search(root, "warmup", data, 2, 1, "none", 1, args.threads)

        if args.skip != "pruning":
            pruning(
                report,
                root,
                data,
                trials,
                epochs,
                repeats,
                args.threads,
                seeds,
                args.larger,
                args.tolerance,
                args.quick,
            )

        if args.skip != "parallel":
            parallel_trials = args.parallel_trials or (6 if args.quick else 24)
            parallel_epochs = args.parallel_epochs or (5 if args.quick else int(compose().tune.epochs))
            parallel(
                report,
                root,
                {**common, "trials": parallel_trials, "epochs": parallel_epochs},
                parallel_trials,
                parallel_epochs,
                data,
                repeats,
                cores,
                args.quick,
                args.whole_space,
            )
    if repeats < 3:
        report.note(f"only {repeats} repeat(s) per configuration: times are indicative only")
    report.write()


if __name__ == "__main__":
    main()
