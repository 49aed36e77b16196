"""Tracking overhead: the train stage's training with MLflow tracking on against tracking off.

"On" is what the runner does inside the train stage's MLflow run: every epoch's metrics go to a
pipeline.tracking.buffer.MetricBuffer (batched log_batch writes) and the buffer is flushed at the end.
"Off" is the same pipeline.stages.train.train call with no callback. Both train the same fixed
number of epochs (early stopping off) on a temporary SQLite store. The one-off model upload at
the end of the stage is excluded from the ratio; the whole prepare+train invocation, one-off
costs included, is reported beside it for scale.

    python -m bench.tracking_overhead [--quick] [--repeats N] [--threads N] [--epochs N]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Report,
    alternate,
    compose,
    fresh_store,
    markdown_table,
    median,
    parser,
    quiet,
    set_threads,
    spread,
)

TARGET = 1.05


def config(uri: str, threads: int, epochs: int, *extra: str) -> Any:
    return compose(
        f"tracking.uri={uri}",
        "tracking.experiment=bench-tracking",
        f"train.threads={threads}",
        "train.device=cpu",
        f"train.epochs={epochs}",
        "train.early_stopping.patience=1000000",
        "train.params_from=config",
        "candidates=[network]",
        *extra,
    )


def measure_training(report: Report, uri: str, data: str, threads: int, epochs: int, repeats: int) -> None:
    import mlflow

    from pipeline.metrics import resolve_objective
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import train
    from pipeline.tracking.buffer import MetricBuffer
    from pipeline.tracking.store import connect, run_scope

    cfg = config(uri, threads, epochs, f"data={data}")
    experiment_id = connect(uri, cfg.tracking.experiment)
    prepared = prepare(cfg.data, cfg.seed)
    objective = resolve_objective(None, None, prepared.task)
    run_costs: list[float] = []
    flush_counts: list[int] = []

    def off() -> float:
        started = time.perf_counter()
        trained = train(cfg.train, cfg.model, cfg.seed, prepared, objective, None, on_epoch=None)
        assert len(trained.history) == epochs
        return time.perf_counter() - started

    def on() -> float:
        opened = time.perf_counter()
        with run_scope("train", experiment_id, {"stage": "train", "bench": "tracking"}) as run:
            buffer = MetricBuffer(run.info.run_id)
            flushes = 0
            original = buffer.flush

            def counting_flush() -> None:
                nonlocal flushes
                flushes += 1
                original()

            buffer.flush = counting_flush  # type: ignore[method-assign]
            started = time.perf_counter()
            trained = train(cfg.train, cfg.model, cfg.seed, prepared, objective, None, on_epoch=buffer.add)
            buffer.flush()
            seconds = time.perf_counter() - started
        run_costs.append(time.perf_counter() - opened - seconds)
        flush_counts.append(flushes)
        assert len(trained.history) == epochs
        return seconds

    print(f"\n{data}: {epochs} epochs, tracking off vs on", flush=True)
    times = alternate(
        {"tracking off": off, "tracking on": on},
        repeats,
        warmup=1,
        measure=lambda name, returned, seconds: returned,
    )
    ratio = median(times["tracking on"]) / median(times["tracking off"])
    # every metric of the last run landed in the store
    last = mlflow.tracking.MlflowClient().search_runs(
        [experiment_id], order_by=["attributes.start_time DESC"], max_results=1
    )[0]
    logged = len(mlflow.tracking.MlflowClient().get_metric_history(last.info.run_id, "train_loss"))
    assert logged == epochs, f"{logged} train_loss values logged, expected {epochs}"
    rows = [
        [name, median(values), spread(values), median(values) / median(times["tracking off"])]
        for name, values in times.items()
    ]
    report.section(
        f"{data}: training seconds, {epochs} epochs",
        f"{prepared.features['train'].shape[0]} training rows; median of {repeats} alternating "
        f"repeats; {median(flush_counts):.0f} log_batch flush(es) per run; opening and closing the "
        "MLflow run "
        f"took {median(run_costs):.3f}s more (not in the ratio).\n\n"
        + markdown_table(["variant", "seconds", "range", "vs off"], rows),
    )
    report.headline(
        f"{data}: train with tracking / without ({epochs} epochs)",
        round(ratio, 3),
        f"<= {TARGET}",
        ratio <= TARGET,
    )


def measure_stage(report: Report, root: Path, threads: int, epochs: int, repeats: int) -> None:
    """The whole `stages=[prepare,train]` invocation: tracking on (a fresh store each time, so
    prepare is not served from the cache) against tracking.enabled=false."""
    from pipeline.runner import run_pipeline

    counter = iter(range(10_000))

    def invocation(enabled: bool) -> Any:
        uri = fresh_store(root / f"stage-{next(counter)}")
        cfg = config(
            uri,
            threads,
            epochs,
            "stages=[prepare,train]",
            f"tracking.enabled={str(enabled).lower()}",
        )
        return run_pipeline(cfg)

    def keep(name: str, result: Any, seconds: float) -> float:
        train_seconds[name].append(result.outputs["train"]["network"].seconds)
        return seconds

    train_seconds: dict[str, list[float]] = {"tracking off": [], "tracking on": []}
    print(f"\nwhole prepare+train invocation, {epochs} epochs, tracking off vs on", flush=True)
    times = alternate(
        {"tracking off": lambda: invocation(False), "tracking on": lambda: invocation(True)},
        repeats,
        warmup=1,
        measure=keep,
    )
    rows = [
        [
            name,
            median(values),
            spread(values),
            median(train_seconds[name]),
            median(values) - median(times["tracking off"]),
        ]
        for name, values in times.items()
    ]
    report.section(
        f"Whole prepare+train invocation (breast_cancer, {epochs} epochs), one-off costs included",
        "Tracking on includes the parent and stage runs, the config, git state and package "
        "versions, the prepared data's artifacts and dataset input, the learning-curve figure and "
        "the model upload (pyfunc with code, signature and input example); a fresh store each time "
        f"so prepare is never a cache hit. Median of {repeats} alternating repeats.\n\n"
        + markdown_table(["variant", "invocation seconds", "range", "of which fit", "added seconds"], rows),
    )
    added = median(times["tracking on"]) - median(times["tracking off"])
    report.headline(
        "whole prepare+train invocation: seconds added by tracking (one-off costs)",
        round(added, 2),
        "info",
        None,
    )


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs per training (default 60, --quick 20)")
    p.add_argument(
        "--stage",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also time the whole prepare+train invocation (auto: not with --quick)",
    )
    args = p.parse_args()
    quiet(mlflow=True)
    set_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    epochs = args.epochs or (20 if args.quick else 60)
    report = Report(
        "tracking_overhead",
        "Tracking overhead: train stage with MLflow tracking on vs off",
        args.quick,
        {
            "threads": args.threads,
            "repeats": repeats,
            "epochs": epochs,
            "store": "temporary SQLite",
            "flush_seconds": 5.0,
        },
    )
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        root = Path(tmp)
        uri = fresh_store(root / "store")
        datasets = ["breast_cancer"] if args.quick else ["breast_cancer", "digits"]
        for data in datasets:
            measure_training(report, uri, data, args.threads, epochs, repeats)
        if args.stage == "yes" or (args.stage == "auto" and not args.quick):
            measure_stage(report, root, args.threads, epochs, repeats)
        else:
            report.note("the whole prepare+train invocation was not timed (--quick; --stage yes times it)")
    report.note(
        "The ratio times pipeline.stages.train.train (plus the buffer's final flush) inside an "
        "open MLflow run against the same call without tracking; run creation and the model "
        "upload are one-off costs reported separately."
    )
    report.write()


if __name__ == "__main__":
    main()
